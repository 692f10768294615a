package store

import (
	"reflect"
	"strings"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/internal/msgpackwire"
)

// Records are encoded under the engine mutex, so their encoding is on every
// mutation's critical path. appendRecord writes exactly what the msgpack
// library writes for an engine.Record (a map keyed by the struct tags,
// omitempty fields left out), without reflection or allocation; what that
// buys end to end is in BENCHMARKS.md ("The hand-written msgpack code"). It
// is used only while the engine's structs have exactly the
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
	dst = msgpackwire.AppendUint(msgpackwire.AppendStr(dst, "k"), uint64(r.Kind))
	dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "t"), r.Time)
	if r.AgentID != "" {
		dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "a"), r.AgentID)
	}
	if r.SessionID != "" {
		dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "s"), r.SessionID)
	}
	if r.Priority != 0 {
		dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "p"), r.Priority)
	}
	if r.UID != 0 {
		dst = msgpackwire.AppendUint(msgpackwire.AppendStr(dst, "u"), uint64(r.UID))
	}
	if r.Auto {
		dst = append(msgpackwire.AppendStr(dst, "au"), 0xc3)
	}
	if r.TTL != 0 {
		dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "ttl"), r.TTL)
	}
	if r.Resource != "" {
		dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "r"), r.Resource)
	}
	if len(r.LeaseIDs) > 0 {
		dst = msgpackwire.AppendArrayLen(msgpackwire.AppendStr(dst, "ls"), len(r.LeaseIDs))
		for _, id := range r.LeaseIDs {
			dst = msgpackwire.AppendStr(dst, id)
		}
	}
	if len(r.Leases) > 0 {
		dst = msgpackwire.AppendArrayLen(msgpackwire.AppendStr(dst, "g"), len(r.Leases))
		for i := range r.Leases {
			dst = appendLease(dst, &r.Leases[i])
		}
	}
	if r.Idem != "" {
		dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "i"), r.Idem)
	}
	if r.Bound != nil {
		dst = appendProcess(msgpackwire.AppendStr(dst, "b"), r.Bound)
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
	dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "id"), l.ID)
	dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "a"), l.AgentID)
	dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "s"), l.SessionID)
	dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "r"), l.Resource)
	dst = msgpackwire.AppendUint(msgpackwire.AppendStr(dst, "p"), uint64(l.Predicate))
	dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "at"), l.AcquiredAt)
	dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "ex"), l.ExpiresAt)
	dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "ttl"), l.TTL)
	dst = msgpackwire.AppendUint(msgpackwire.AppendStr(dst, "f"), l.Fence)
	dst = msgpackwire.AppendUint(msgpackwire.AppendStr(dst, "u"), uint64(l.OwnerUID))
	dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "pid"), int64(l.OwnerPID))
	if l.Bound != nil {
		dst = appendProcess(msgpackwire.AppendStr(dst, "b"), l.Bound)
	}
	if l.ClientPath != "" {
		dst = msgpackwire.AppendStr(msgpackwire.AppendStr(dst, "cp"), l.ClientPath)
	}
	return dst
}

// appendProcess appends p as msgpack: its three fields.
func appendProcess(dst []byte, p *engine.Process) []byte {
	dst = append(dst, 0x80|3)
	dst = msgpackwire.AppendInt(msgpackwire.AppendStr(dst, "pid"), int64(p.PID))
	dst = msgpackwire.AppendUint(msgpackwire.AppendStr(dst, "bt"), uint64(p.Boot))
	return msgpackwire.AppendUint(msgpackwire.AppendStr(dst, "st"), p.Start)
}
