package store

import (
	"math"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/internal/msgpackwire"
)

// Recovery decodes every record of the log, so decoding is on the start's
// critical path. decodeRecordFast reads the canonical encoding appendRecord
// writes (known keys, shortest integers, strings as str) without
// reflection. Anything else — an unknown key, a nil, a float, a value out of
// its field's range — makes it give up, and the library decodes the body
// instead, so the result is always the library's (TestDecodeRecordFast and
// FuzzDecodeRecordFast hold it to that). Like appendRecord, it is used only
// while the engine's structs have the layout it knows (fastEncode).
// Snapshots are decoded by the library alone: a hand-written decoder for
// them bought too little to keep (BENCHMARKS.md).

// mpReader reads the canonical encoding with the shared msgpack reader; ok
// turns false, for good, at the first thing it does not handle.
type mpReader struct {
	r  msgpackwire.Reader
	ok bool
}

// newMPReader returns an mpReader of b.
func newMPReader(b []byte) mpReader {
	r := mpReader{ok: true}
	r.r.Reset(b)
	return r
}

// check turns ok false when err is set, and reports whether ok still holds.
func (r *mpReader) check(err error) bool {
	if err != nil {
		r.ok = false
	}
	return r.ok
}

// done reports whether everything was read, and well.
func (r *mpReader) done() bool { return r.ok && r.r.Rest() == 0 }

func (r *mpReader) mapLen() int {
	if !r.ok {
		return 0
	}
	n, err := r.r.MapLen()
	if !r.check(err) {
		return 0
	}
	return n
}

// arrayLen reads a non-empty array's length, at most maxMsgpackContainer
// (an empty one is left to the library, which decides between nil and
// empty).
func (r *mpReader) arrayLen() int { return r.arrayLenMax(maxMsgpackContainer) }

// arrayLenMax is arrayLen with the element cap max; the shared reader
// checks that the length also fits in the bytes that remain, so what make
// allocates stays in proportion to the input.
func (r *mpReader) arrayLenMax(max int) int {
	if !r.ok {
		return 0
	}
	n, err := r.r.ArrayLen()
	if !r.check(err) || n == 0 || n > max {
		r.ok = false
		return 0
	}
	return n
}

func (r *mpReader) str() string {
	if !r.ok {
		return ""
	}
	b, err := r.r.StrBytes()
	if !r.check(err) {
		return ""
	}
	return string(b)
}

// int reads an integer in [lo, hi].
func (r *mpReader) int(lo, hi int64) int64 {
	if !r.ok {
		return 0
	}
	v, err := r.r.Int()
	if !r.check(err) || v < lo || v > hi {
		r.ok = false
		return 0
	}
	return v
}

// uint64 reads an unsigned integer (any width the encoder uses).
func (r *mpReader) uint64() uint64 {
	if !r.ok {
		return 0
	}
	u, neg, err := r.r.Integer()
	if !r.check(err) || neg {
		r.ok = false
		return 0
	}
	return u
}

func (r *mpReader) bool() bool {
	if !r.ok {
		return false
	}
	v, err := r.r.Bool()
	r.check(err)
	return v && r.ok
}

// once reports whether key bit k is seen for the first time in a map; a
// repeated key is left to the library, whose answer depends on it.
func (r *mpReader) once(seen *uint16, k uint) {
	if *seen&(1<<k) != 0 {
		r.ok = false
	}
	*seen |= 1 << k
}

// recordKeys and leaseKeys number the keys for duplicate detection.
var (
	recordKeys  = map[string]uint{"k": 0, "t": 1, "a": 2, "s": 3, "p": 4, "u": 5, "au": 6, "ttl": 7, "r": 8, "ls": 9, "g": 10, "i": 11, "b": 12}
	leaseKeys   = map[string]uint{"id": 0, "a": 1, "s": 2, "r": 3, "p": 4, "at": 5, "ex": 6, "ttl": 7, "f": 8, "u": 9, "pid": 10, "b": 11, "cp": 12}
	processKeys = map[string]uint{"pid": 0, "bt": 1, "st": 2}
)

// key reads a map key from keys, marking it seen.
func (r *mpReader) key(keys map[string]uint, seen *uint16) string {
	k := r.str()
	bit, known := keys[k]
	if !known {
		r.ok = false
		return ""
	}
	r.once(seen, bit)
	return k
}

// decodeRecordFast decodes body, or reports false when the library must.
func decodeRecordFast(body []byte) (engine.Record, bool) {
	r := newMPReader(body)
	var rec engine.Record
	var seen uint16
	for n := r.mapLen(); n > 0 && r.ok; n-- {
		switch r.key(recordKeys, &seen) {
		case "k":
			rec.Kind = engine.RecordKind(r.int(0, math.MaxUint8))
		case "t":
			rec.Time = r.int(math.MinInt64, math.MaxInt64)
		case "a":
			rec.AgentID = r.str()
		case "s":
			rec.SessionID = r.str()
		case "p":
			rec.Priority = r.int(math.MinInt64, math.MaxInt64)
		case "u":
			rec.UID = uint32(r.int(0, math.MaxUint32))
		case "au":
			rec.Auto = r.bool()
		case "ttl":
			rec.TTL = r.int(math.MinInt64, math.MaxInt64)
		case "r":
			rec.Resource = r.str()
		case "ls":
			ids := make([]string, r.arrayLen())
			for i := range ids {
				ids[i] = r.str()
			}
			rec.LeaseIDs = ids
		case "g":
			ls := make([]engine.Lease, r.arrayLen())
			for i := range ls {
				r.lease(&ls[i])
			}
			rec.Leases = ls
		case "i":
			rec.Idem = r.str()
		case "b":
			rec.Bound = r.process()
		default:
			r.ok = false
		}
	}
	if !r.done() {
		return engine.Record{}, false
	}
	return rec, true
}

// process decodes one engine.Process map; a nil is left to the library.
func (r *mpReader) process() *engine.Process {
	p := new(engine.Process)
	var seen uint16
	for n := r.mapLen(); n > 0 && r.ok; n-- {
		switch r.key(processKeys, &seen) {
		case "pid":
			p.PID = int32(r.int(math.MinInt32, math.MaxInt32))
		case "bt":
			p.Boot = uint32(r.int(0, math.MaxUint32))
		case "st":
			p.Start = r.uint64()
		default:
			r.ok = false
		}
	}
	return p
}

// lease decodes one engine.Lease map.
func (r *mpReader) lease(l *engine.Lease) {
	var seen uint16
	for n := r.mapLen(); n > 0 && r.ok; n-- {
		switch r.key(leaseKeys, &seen) {
		case "id":
			l.ID = r.str()
		case "a":
			l.AgentID = r.str()
		case "s":
			l.SessionID = r.str()
		case "r":
			l.Resource = r.str()
		case "p":
			l.Predicate = engine.Predicate(r.int(0, math.MaxUint8))
		case "at":
			l.AcquiredAt = r.int(math.MinInt64, math.MaxInt64)
		case "ex":
			l.ExpiresAt = r.int(math.MinInt64, math.MaxInt64)
		case "ttl":
			l.TTL = r.int(math.MinInt64, math.MaxInt64)
		case "f":
			l.Fence = r.uint64()
		case "u":
			l.OwnerUID = uint32(r.int(0, math.MaxUint32))
		case "pid":
			l.OwnerPID = int32(r.int(math.MinInt32, math.MaxInt32))
		case "b":
			l.Bound = r.process()
		case "cp":
			l.ClientPath = r.str()
		default:
			r.ok = false
		}
	}
}
