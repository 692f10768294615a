package protocol

import (
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// Hand-written encoders and decoders for the results on the hot path
// (acquire, release, heartbeat, count, watch events), so the common round trip uses no
// reflection. They produce and accept exactly what the msgpack library
// does for the same structs; other results go through the library.

// wireAppender is a result that can append its own msgpack map.
type wireAppender interface {
	appendMsgpack(b []byte) []byte
}

// wireDecoder is a result that can decode itself from a msgpack map.
type wireDecoder interface {
	decodeMsgpack(r *reader) error
}

func (g *Grant) appendMsgpack(b []byte) []byte {
	if g.BoundPID != 0 {
		b = appendMapLen(b, 10)
	} else {
		b = appendMapLen(b, 9)
	}
	b = appendStr(b, "success")
	b = appendBool(b, g.Success)
	b = appendStr(b, "lease_id")
	b = appendStr(b, g.LeaseID)
	b = appendStr(b, "agent_id")
	b = appendStr(b, g.AgentID)
	b = appendStr(b, "session_id")
	b = appendStr(b, g.SessionID)
	b = appendStr(b, "resource")
	b = appendStr(b, g.Resource)
	b = appendStr(b, "predicate")
	b = appendStr(b, g.Predicate)
	b = appendStr(b, "acquired_at")
	b = appendInt(b, g.AcquiredAt)
	b = appendStr(b, "expires_at")
	b = appendInt(b, g.ExpiresAt)
	b = appendStr(b, "fence")
	b = appendUint(b, g.Fence)
	if g.BoundPID != 0 {
		b = appendStr(b, "bound_pid")
		b = appendInt(b, int64(g.BoundPID))
	}
	return b
}

func (d *Denial) appendMsgpack(b []byte) []byte {
	n := 5
	if d.HeldPath != "" {
		n = 6
	}
	b = appendMapLen(b, n)
	b = appendStr(b, "success")
	b = appendBool(b, d.Success)
	b = appendStr(b, "reason")
	b = appendStr(b, string(d.Reason))
	b = appendStr(b, "wait_time")
	b = appendInt(b, d.WaitTime)
	b = appendStr(b, "held_by")
	b = appendStr(b, d.HeldBy)
	b = appendStr(b, "message")
	b = appendStr(b, d.Message)
	if d.HeldPath != "" {
		b = appendStr(b, "held_path")
		b = appendStr(b, d.HeldPath)
	}
	return b
}

func (g *AcquireManyGrant) appendMsgpack(b []byte) []byte {
	b = appendMapLen(b, 2)
	b = appendStr(b, "success")
	b = appendBool(b, g.Success)
	b = appendStr(b, "leases")
	b = appendArrayLen(b, len(g.Leases))
	for i := range g.Leases {
		b = g.Leases[i].appendMsgpack(b)
	}
	return b
}

func (r *ReleaseResult) appendMsgpack(b []byte) []byte {
	return appendBool(appendStr(appendMapLen(b, 1), "released"), r.Released)
}

func (h *HeartbeatResult) appendMsgpack(b []byte) []byte {
	b = appendMapLen(b, 2)
	b = appendStr(b, "lease_id")
	b = appendStr(b, h.LeaseID)
	b = appendStr(b, "expires_at")
	return appendInt(b, h.ExpiresAt)
}

func (ev *WatchEvent) appendMsgpack(b []byte) []byte {
	n := 8
	if ev.ExpiresAt != 0 {
		n++
	}
	if ev.Reason != "" {
		n++
	}
	if ev.HeldBy != "" {
		n++
	}
	b = appendMapLen(b, n)
	b = appendStr(b, "event")
	b = appendStr(b, ev.Event)
	b = appendStr(b, "at")
	b = appendInt(b, ev.At)
	b = appendStr(b, "resource")
	b = appendStr(b, ev.Resource)
	b = appendStr(b, "agent_id")
	b = appendStr(b, ev.AgentID)
	b = appendStr(b, "session_id")
	b = appendStr(b, ev.SessionID)
	b = appendStr(b, "lease_id")
	b = appendStr(b, ev.LeaseID)
	b = appendStr(b, "predicate")
	b = appendStr(b, ev.Predicate)
	b = appendStr(b, "fence")
	b = appendUint(b, ev.Fence)
	if ev.ExpiresAt != 0 {
		b = appendStr(b, "expires_at")
		b = appendInt(b, ev.ExpiresAt)
	}
	if ev.Reason != "" {
		b = appendStr(b, "reason")
		b = appendStr(b, string(ev.Reason))
	}
	if ev.HeldBy != "" {
		b = appendStr(b, "held_by")
		b = appendStr(b, ev.HeldBy)
	}
	return b
}

func (c *CountResult) appendMsgpack(b []byte) []byte {
	return appendInt(appendStr(appendMapLen(b, 1), "count"), int64(c.Count))
}

// field decoders: each reads one value into a Go field, sharing text for
// strings.

func (r *reader) decodeStr(dst *string) error {
	if isNil, err := r.skipNil(); isNil || err != nil {
		*dst = ""
		return err
	}
	b, err := r.strBytes()
	if err != nil {
		return err
	}
	*dst = r.strOf(b)
	return nil
}

func (r *reader) decodeInt(dst *int64) error {
	if isNil, err := r.skipNil(); isNil || err != nil {
		*dst = 0
		return err
	}
	if c := r.b[r.off]; c >= 0xe0 || (c >= 0xd0 && c <= 0xd3) {
		// Negative numbers are rare here: let the library read them exactly.
		return r.viaLibrary(dst)
	}
	u, _, err := r.integer()
	*dst = int64(u)
	return err
}

func (r *reader) decodeUint(dst *uint64) error {
	var v int64
	if err := r.decodeInt(&v); err != nil {
		return err
	}
	*dst = uint64(v)
	return nil
}

func (r *reader) decodeBool(dst *bool) error {
	if isNil, err := r.skipNil(); isNil || err != nil {
		*dst = false
		return err
	}
	v, err := r.boolean()
	*dst = v
	return err
}

// skipNil consumes a nil if one is next, reporting whether it did: a nil
// leaves a field at its zero value, as the library does.
func (r *reader) skipNil() (bool, error) {
	c, err := r.peek()
	if err != nil || c != 0xc0 {
		return false, err
	}
	r.off++
	return true, nil
}

// viaLibrary decodes the next value into dst with the msgpack library.
func (r *reader) viaLibrary(dst any) error {
	start := r.off
	if err := r.skip(); err != nil {
		return err
	}
	return msgpack.Unmarshal(r.b[start:r.off], dst)
}

// decodeFields reads a map, calling field for each string key; field
// returns false for keys it does not know, which are skipped.
func (r *reader) decodeFields(field func(key []byte) (known bool, err error)) error {
	c, err := r.peek()
	if err != nil {
		return err
	}
	if c == 0xc0 {
		r.off++
		return nil
	}
	n, err := r.mapLen()
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		c, err := r.peek()
		if err != nil {
			return err
		}
		if !isStringCode(c) {
			if err := r.skip(); err != nil {
				return err
			}
			if err := r.skip(); err != nil {
				return err
			}
			continue
		}
		key, err := r.strBytes()
		if err != nil {
			return err
		}
		known, err := field(key)
		if err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
		if !known {
			if err := r.skip(); err != nil {
				return err
			}
		}
	}
	return nil
}

// grantField decodes one key shared by Grant and AcquireResult.
func (r *reader) grantField(key []byte, g *Grant) (bool, error) {
	switch string(key) {
	case "success":
		return true, r.decodeBool(&g.Success)
	case "lease_id":
		return true, r.decodeStr(&g.LeaseID)
	case "agent_id":
		return true, r.decodeStr(&g.AgentID)
	case "session_id":
		return true, r.decodeStr(&g.SessionID)
	case "resource":
		return true, r.decodeStr(&g.Resource)
	case "predicate":
		return true, r.decodeStr(&g.Predicate)
	case "acquired_at":
		return true, r.decodeInt(&g.AcquiredAt)
	case "expires_at":
		return true, r.decodeInt(&g.ExpiresAt)
	case "fence":
		return true, r.decodeUint(&g.Fence)
	case "bound_pid":
		var v int64
		if err := r.decodeInt(&v); err != nil {
			return true, err
		}
		if v < math.MinInt32 || v > math.MaxInt32 {
			return true, fmt.Errorf("bound_pid %d does not fit a pid", v)
		}
		g.BoundPID = int32(v)
		return true, nil
	}
	return false, nil
}

func (g *Grant) decodeMsgpack(r *reader) error {
	*g = Grant{}
	return r.decodeFields(func(key []byte) (bool, error) { return r.grantField(key, g) })
}

// decodeMsgpack decodes a watch event: every event of a stream passes
// here, in klockctl watch and clientlib.Watch.
func (ev *WatchEvent) decodeMsgpack(r *reader) error {
	*ev = WatchEvent{}
	var g Grant
	return r.decodeFields(func(key []byte) (bool, error) {
		switch string(key) {
		case "event":
			return true, r.decodeStr(&ev.Event)
		case "at":
			return true, r.decodeInt(&ev.At)
		case "reason":
			var s string
			err := r.decodeStr(&s)
			ev.Reason = Reason(s)
			return true, err
		case "held_by":
			return true, r.decodeStr(&ev.HeldBy)
		}
		known, err := r.grantField(key, &g)
		ev.Resource, ev.AgentID, ev.SessionID, ev.LeaseID = g.Resource, g.AgentID, g.SessionID, g.LeaseID
		ev.Predicate, ev.Fence, ev.ExpiresAt = g.Predicate, g.Fence, g.ExpiresAt
		return known, err // a Grant key that no event has (success, acquired_at) is read and dropped
	})
}

func (a *AcquireResult) decodeMsgpack(r *reader) error {
	*a = AcquireResult{}
	var g Grant
	err := r.decodeFields(func(key []byte) (bool, error) {
		switch string(key) {
		case "reason":
			var s string
			err := r.decodeStr(&s)
			a.Reason = Reason(s)
			return true, err
		case "wait_time":
			return true, r.decodeInt(&a.WaitTime)
		case "held_by":
			return true, r.decodeStr(&a.HeldBy)
		case "held_path":
			return true, r.decodeStr(&a.HeldPath)
		case "message":
			return true, r.decodeStr(&a.Message)
		case "leases":
			return true, r.viaLibrary(&a.Leases)
		}
		return r.grantField(key, &g)
	})
	a.Success, a.LeaseID, a.AgentID, a.SessionID = g.Success, g.LeaseID, g.AgentID, g.SessionID
	a.Resource, a.Predicate, a.AcquiredAt, a.ExpiresAt, a.Fence = g.Resource, g.Predicate, g.AcquiredAt, g.ExpiresAt, g.Fence
	a.BoundPID = g.BoundPID
	return err
}

func (res *ReleaseResult) decodeMsgpack(r *reader) error {
	*res = ReleaseResult{}
	return r.decodeFields(func(key []byte) (bool, error) {
		if string(key) == "released" {
			return true, r.decodeBool(&res.Released)
		}
		return false, nil
	})
}

func (h *HeartbeatResult) decodeMsgpack(r *reader) error {
	*h = HeartbeatResult{}
	return r.decodeFields(func(key []byte) (bool, error) {
		switch string(key) {
		case "lease_id":
			return true, r.decodeStr(&h.LeaseID)
		case "expires_at":
			return true, r.decodeInt(&h.ExpiresAt)
		}
		return false, nil
	})
}

func (c *CountResult) decodeMsgpack(r *reader) error {
	*c = CountResult{}
	return r.decodeFields(func(key []byte) (bool, error) {
		if string(key) == "count" {
			var v int64
			err := r.decodeInt(&v)
			c.Count = int(v)
			return true, err
		}
		return false, nil
	})
}

// decodeResponse reads a response envelope with the reader. The result is
// copied out of body.
func decodeResponse(body []byte, resp *Response) error {
	r := &reader{b: body}
	return r.decodeFields(func(key []byte) (bool, error) {
		switch string(key) {
		case "id":
			var v uint64
			err := r.decodeUint(&v)
			resp.ID = v
			return true, err
		case "ok":
			return true, r.decodeBool(&resp.OK)
		case "result":
			start := r.off
			if err := r.skip(); err != nil {
				return true, err
			}
			if body[start] != 0xc0 {
				resp.Result = append(msgpack.RawMessage(nil), body[start:r.off]...)
			}
			return true, nil
		case "error":
			start := r.off
			if err := r.skip(); err != nil {
				return true, err
			}
			if body[start] == 0xc0 {
				return true, nil
			}
			resp.Error = new(Error)
			er := &reader{b: body[start:r.off]}
			return true, er.decodeFields(func(key []byte) (bool, error) {
				switch string(key) {
				case "code":
					var s string
					err := er.decodeStr(&s)
					resp.Error.Code = Code(s)
					return true, err
				case "message":
					return true, er.decodeStr(&resp.Error.Message)
				}
				return false, nil
			})
		}
		return false, nil
	})
}
