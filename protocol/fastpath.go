package protocol

import (
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/klockd/klock/internal/msgpackwire"
)

// Hand-written encoders and decoders for the results on the hot path
// (acquire, release, heartbeat, watch events), so the common round trip
// uses no reflection. They produce and accept exactly what the msgpack
// library does for the same structs (fastpath_test.go); other results go
// through the library. What each buys end to end, and what was dropped
// for buying too little, is in BENCHMARKS.md ("The hand-written msgpack
// code").

// wireAppender is a result that can append its own msgpack map.
type wireAppender interface {
	appendMsgpack(b []byte) []byte
}

// wireDecoder is a result that can decode itself from a msgpack map.
type wireDecoder interface {
	decodeMsgpack(r *reader) error
}

// reader is the shared msgpack reader with the field decoders below.
type reader struct{ msgpackwire.Reader }

// newReader returns a reader of b.
func newReader(b []byte) *reader {
	r := new(reader)
	r.Reset(b)
	return r
}

func (g *Grant) appendMsgpack(b []byte) []byte {
	if g.BoundPID != 0 {
		b = msgpackwire.AppendMapLen(b, 10)
	} else {
		b = msgpackwire.AppendMapLen(b, 9)
	}
	b = msgpackwire.AppendStr(b, "success")
	b = msgpackwire.AppendBool(b, g.Success)
	b = msgpackwire.AppendStr(b, "lease_id")
	b = msgpackwire.AppendStr(b, g.LeaseID)
	b = msgpackwire.AppendStr(b, "agent_id")
	b = msgpackwire.AppendStr(b, g.AgentID)
	b = msgpackwire.AppendStr(b, "session_id")
	b = msgpackwire.AppendStr(b, g.SessionID)
	b = msgpackwire.AppendStr(b, "resource")
	b = msgpackwire.AppendStr(b, g.Resource)
	b = msgpackwire.AppendStr(b, "predicate")
	b = msgpackwire.AppendStr(b, g.Predicate)
	b = msgpackwire.AppendStr(b, "acquired_at")
	b = msgpackwire.AppendInt(b, g.AcquiredAt)
	b = msgpackwire.AppendStr(b, "expires_at")
	b = msgpackwire.AppendInt(b, g.ExpiresAt)
	b = msgpackwire.AppendStr(b, "fence")
	b = msgpackwire.AppendUint(b, g.Fence)
	if g.BoundPID != 0 {
		b = msgpackwire.AppendStr(b, "bound_pid")
		b = msgpackwire.AppendInt(b, int64(g.BoundPID))
	}
	return b
}

func (d *Denial) appendMsgpack(b []byte) []byte {
	n := 5
	if d.HeldPath != "" {
		n = 6
	}
	b = msgpackwire.AppendMapLen(b, n)
	b = msgpackwire.AppendStr(b, "success")
	b = msgpackwire.AppendBool(b, d.Success)
	b = msgpackwire.AppendStr(b, "reason")
	b = msgpackwire.AppendStr(b, string(d.Reason))
	b = msgpackwire.AppendStr(b, "wait_time")
	b = msgpackwire.AppendInt(b, d.WaitTime)
	b = msgpackwire.AppendStr(b, "held_by")
	b = msgpackwire.AppendStr(b, d.HeldBy)
	b = msgpackwire.AppendStr(b, "message")
	b = msgpackwire.AppendStr(b, d.Message)
	if d.HeldPath != "" {
		b = msgpackwire.AppendStr(b, "held_path")
		b = msgpackwire.AppendStr(b, d.HeldPath)
	}
	return b
}

func (g *AcquireManyGrant) appendMsgpack(b []byte) []byte {
	b = msgpackwire.AppendMapLen(b, 2)
	b = msgpackwire.AppendStr(b, "success")
	b = msgpackwire.AppendBool(b, g.Success)
	b = msgpackwire.AppendStr(b, "leases")
	b = msgpackwire.AppendArrayLen(b, len(g.Leases))
	for i := range g.Leases {
		b = g.Leases[i].appendMsgpack(b)
	}
	return b
}

func (r *ReleaseResult) appendMsgpack(b []byte) []byte {
	return msgpackwire.AppendBool(msgpackwire.AppendStr(msgpackwire.AppendMapLen(b, 1), "released"), r.Released)
}

func (h *HeartbeatResult) appendMsgpack(b []byte) []byte {
	b = msgpackwire.AppendMapLen(b, 2)
	b = msgpackwire.AppendStr(b, "lease_id")
	b = msgpackwire.AppendStr(b, h.LeaseID)
	b = msgpackwire.AppendStr(b, "expires_at")
	return msgpackwire.AppendInt(b, h.ExpiresAt)
}

func (ev *WatchEvent) appendMsgpack(b []byte) []byte {
	n := 8
	if ev.ExpiresAt != 0 {
		n++
	}
	if ev.BoundPID != 0 {
		n++
	}
	if ev.Reason != "" {
		n++
	}
	if ev.HeldBy != "" {
		n++
	}
	b = msgpackwire.AppendMapLen(b, n)
	b = msgpackwire.AppendStr(b, "event")
	b = msgpackwire.AppendStr(b, ev.Event)
	b = msgpackwire.AppendStr(b, "at")
	b = msgpackwire.AppendInt(b, ev.At)
	b = msgpackwire.AppendStr(b, "resource")
	b = msgpackwire.AppendStr(b, ev.Resource)
	b = msgpackwire.AppendStr(b, "agent_id")
	b = msgpackwire.AppendStr(b, ev.AgentID)
	b = msgpackwire.AppendStr(b, "session_id")
	b = msgpackwire.AppendStr(b, ev.SessionID)
	b = msgpackwire.AppendStr(b, "lease_id")
	b = msgpackwire.AppendStr(b, ev.LeaseID)
	b = msgpackwire.AppendStr(b, "predicate")
	b = msgpackwire.AppendStr(b, ev.Predicate)
	b = msgpackwire.AppendStr(b, "fence")
	b = msgpackwire.AppendUint(b, ev.Fence)
	if ev.ExpiresAt != 0 {
		b = msgpackwire.AppendStr(b, "expires_at")
		b = msgpackwire.AppendInt(b, ev.ExpiresAt)
	}
	if ev.BoundPID != 0 {
		b = msgpackwire.AppendStr(b, "bound_pid")
		b = msgpackwire.AppendInt(b, int64(ev.BoundPID))
	}
	if ev.Reason != "" {
		b = msgpackwire.AppendStr(b, "reason")
		b = msgpackwire.AppendStr(b, string(ev.Reason))
	}
	if ev.HeldBy != "" {
		b = msgpackwire.AppendStr(b, "held_by")
		b = msgpackwire.AppendStr(b, ev.HeldBy)
	}
	return b
}

// field decoders: each reads one value into a Go field, sharing text for
// strings.

func (r *reader) decodeStr(dst *string) error {
	if isNil, err := r.SkipNil(); isNil || err != nil {
		*dst = ""
		return err
	}
	b, err := r.StrBytes()
	if err != nil {
		return err
	}
	*dst = r.StringOf(b)
	return nil
}

func (r *reader) decodeInt(dst *int64) error {
	if isNil, err := r.SkipNil(); isNil || err != nil {
		*dst = 0
		return err
	}
	if c, _ := r.Peek(); c >= 0xe0 || (c >= 0xd0 && c <= 0xd3) {
		// Negative numbers are rare here: let the library read them exactly.
		return r.viaLibrary(dst)
	}
	u, _, err := r.Integer()
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
	if isNil, err := r.SkipNil(); isNil || err != nil {
		*dst = false
		return err
	}
	v, err := r.Bool()
	*dst = v
	return err
}

// viaLibrary decodes the next value into dst with the msgpack library.
func (r *reader) viaLibrary(dst any) error {
	raw, err := r.Raw()
	if err != nil {
		return err
	}
	return msgpack.Unmarshal(raw, dst)
}

// decodeFields reads a map, calling field for each string key; field
// returns false for keys it does not know, which are skipped.
func (r *reader) decodeFields(field func(key []byte) (known bool, err error)) error {
	if isNil, err := r.SkipNil(); isNil || err != nil {
		return err
	}
	n, err := r.MapLen()
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		c, err := r.Peek()
		if err != nil {
			return err
		}
		if !msgpackwire.IsStr(c) {
			if err := r.Skip(); err != nil {
				return err
			}
			if err := r.Skip(); err != nil {
				return err
			}
			continue
		}
		key, err := r.StrBytes()
		if err != nil {
			return err
		}
		known, err := field(key)
		if err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
		if !known {
			if err := r.Skip(); err != nil {
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
		ev.Predicate, ev.Fence, ev.ExpiresAt, ev.BoundPID = g.Predicate, g.Fence, g.ExpiresAt, g.BoundPID
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

// decodeResponse reads a response envelope with the reader. The result is
// copied out of body.
func decodeResponse(body []byte, resp *Response) error {
	r := newReader(body)
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
			raw, err := r.Raw()
			if err != nil {
				return true, err
			}
			if raw[0] != msgpcode.Nil {
				resp.Result = append(msgpack.RawMessage(nil), raw...)
			}
			return true, nil
		case "error":
			raw, err := r.Raw()
			if err != nil || raw[0] == msgpcode.Nil {
				return true, err
			}
			resp.Error = new(Error)
			er := newReader(raw)
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
