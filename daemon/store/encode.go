package store

import (
	"encoding/binary"
	"reflect"
	"strings"

	"github.com/klockd/klock/daemon/engine"
)

// Records are encoded under the engine mutex, so their encoding is on every
// mutation's critical path. appendRecord writes exactly what the msgpack
// library writes for an engine.Record (a map keyed by the struct tags,
// omitempty fields left out), without reflection or allocation: about ten
// times faster. It is used only while the engine's structs have exactly the
// layout it knows (checked once, by reflection, at start); after any change
// to them the store falls back to the library, and TestRecordLayout fails
// until this file is updated.

// recordLayout and leaseLayout are the fields appendRecord writes.
const (
	recordLayout = "Kind engine.RecordKind k;Time int64 t;AgentID string a,omitempty;SessionID string s,omitempty;" +
		"Priority int64 p,omitempty;UID uint32 u,omitempty;Auto bool au,omitempty;TTL int64 ttl,omitempty;" +
		"Resource string r,omitempty;LeaseIDs []string ls,omitempty;Leases []engine.Lease g,omitempty;Idem string i,omitempty;" +
		"Bound *engine.Process b,omitempty;"
	leaseLayout = "ID string id;AgentID string a;SessionID string s;Resource string r;Predicate engine.Predicate p;" +
		"AcquiredAt int64 at;ExpiresAt int64 ex;TTL int64 ttl;Fence uint64 f;OwnerUID uint32 u;OwnerPID int32 pid;" +
		"Bound *engine.Process b,omitempty;ClientPath string cp,omitempty;"
	processLayout = "PID int32 pid;Boot uint32 bt;Start uint64 st;"
)

// fastEncode reports whether appendRecord matches the engine's structs.
var fastEncode = layoutOf(reflect.TypeFor[engine.Record]()) == recordLayout &&
	layoutOf(reflect.TypeFor[engine.Lease]()) == leaseLayout &&
	layoutOf(reflect.TypeFor[engine.Process]()) == processLayout

// layoutOf describes a struct's fields as "Name type tag;" each.
func layoutOf(t reflect.Type) string {
	var b strings.Builder
	for i := range t.NumField() {
		f := t.Field(i)
		b.WriteString(f.Name + " " + f.Type.String() + " " + f.Tag.Get("msgpack") + ";")
	}
	return b.String()
}

// appendRecord appends r as msgpack (see above).
func appendRecord(dst []byte, r *engine.Record) []byte {
	n := 2
	for _, set := range [...]bool{r.AgentID != "", r.SessionID != "", r.Priority != 0, r.UID != 0, r.Auto,
		r.TTL != 0, r.Resource != "", len(r.LeaseIDs) > 0, len(r.Leases) > 0, r.Idem != "", r.Bound != nil} {
		if set {
			n++
		}
	}
	dst = append(dst, 0x80|byte(n)) // at most 13 entries: a fixmap
	dst = appendUint(appendStr(dst, "k"), uint64(r.Kind))
	dst = appendInt(appendStr(dst, "t"), r.Time)
	if r.AgentID != "" {
		dst = appendStr(appendStr(dst, "a"), r.AgentID)
	}
	if r.SessionID != "" {
		dst = appendStr(appendStr(dst, "s"), r.SessionID)
	}
	if r.Priority != 0 {
		dst = appendInt(appendStr(dst, "p"), r.Priority)
	}
	if r.UID != 0 {
		dst = appendUint(appendStr(dst, "u"), uint64(r.UID))
	}
	if r.Auto {
		dst = append(appendStr(dst, "au"), 0xc3)
	}
	if r.TTL != 0 {
		dst = appendInt(appendStr(dst, "ttl"), r.TTL)
	}
	if r.Resource != "" {
		dst = appendStr(appendStr(dst, "r"), r.Resource)
	}
	if len(r.LeaseIDs) > 0 {
		dst = appendArrayLen(appendStr(dst, "ls"), len(r.LeaseIDs))
		for _, id := range r.LeaseIDs {
			dst = appendStr(dst, id)
		}
	}
	if len(r.Leases) > 0 {
		dst = appendArrayLen(appendStr(dst, "g"), len(r.Leases))
		for i := range r.Leases {
			dst = appendLease(dst, &r.Leases[i])
		}
	}
	if r.Idem != "" {
		dst = appendStr(appendStr(dst, "i"), r.Idem)
	}
	if r.Bound != nil {
		dst = appendProcess(appendStr(dst, "b"), r.Bound)
	}
	return dst
}

// appendLease appends l as msgpack: eleven fields, then Bound and
// ClientPath when they are set, as the library does.
func appendLease(dst []byte, l *engine.Lease) []byte {
	n := 11
	if l.Bound != nil {
		n++
	}
	if l.ClientPath != "" {
		n++
	}
	dst = append(dst, 0x80|byte(n))
	dst = appendStr(appendStr(dst, "id"), l.ID)
	dst = appendStr(appendStr(dst, "a"), l.AgentID)
	dst = appendStr(appendStr(dst, "s"), l.SessionID)
	dst = appendStr(appendStr(dst, "r"), l.Resource)
	dst = appendUint(appendStr(dst, "p"), uint64(l.Predicate))
	dst = appendInt(appendStr(dst, "at"), l.AcquiredAt)
	dst = appendInt(appendStr(dst, "ex"), l.ExpiresAt)
	dst = appendInt(appendStr(dst, "ttl"), l.TTL)
	dst = appendUint(appendStr(dst, "f"), l.Fence)
	dst = appendUint(appendStr(dst, "u"), uint64(l.OwnerUID))
	dst = appendInt(appendStr(dst, "pid"), int64(l.OwnerPID))
	if l.Bound != nil {
		dst = appendProcess(appendStr(dst, "b"), l.Bound)
	}
	if l.ClientPath != "" {
		dst = appendStr(appendStr(dst, "cp"), l.ClientPath)
	}
	return dst
}

// appendProcess appends p as msgpack: its three fields.
func appendProcess(dst []byte, p *engine.Process) []byte {
	dst = append(dst, 0x80|3)
	dst = appendInt(appendStr(dst, "pid"), int64(p.PID))
	dst = appendUint(appendStr(dst, "bt"), uint64(p.Boot))
	return appendUint(appendStr(dst, "st"), p.Start)
}

func appendStr(dst []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		dst = append(dst, 0xa0|byte(n))
	case n < 1<<8:
		dst = append(dst, 0xd9, byte(n))
	case n < 1<<16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xda), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xdb), uint32(n))
	}
	return append(dst, s...)
}

func appendArrayLen(dst []byte, n int) []byte {
	switch {
	case n < 16:
		return append(dst, 0x90|byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(dst, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, 0xdd), uint32(n))
}

// appendUint appends v in its shortest msgpack form.
func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v < 1<<7:
		return append(dst, byte(v))
	case v < 1<<8:
		return append(dst, 0xcc, byte(v))
	case v < 1<<16:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(v))
	case v < 1<<32:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xcf), v)
}

// appendInt appends v in its shortest msgpack form.
func appendInt(dst []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(dst, uint64(v))
	case v >= -32:
		return append(dst, byte(v))
	case v >= -1<<7:
		return append(dst, 0xd0, byte(v))
	case v >= -1<<15:
		return binary.BigEndian.AppendUint16(append(dst, 0xd1), uint16(v))
	case v >= -1<<31:
		return binary.BigEndian.AppendUint32(append(dst, 0xd2), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(v))
}
