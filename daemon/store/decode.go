package store

import (
	"encoding/binary"
	"math"

	"github.com/klockd/klock/daemon/engine"
)

// Recovery decodes every record of the log, so decoding is on the start's
// critical path. decodeRecordFast reads the canonical encoding appendRecord
// writes (known keys, shortest integers, strings as str) without
// reflection. Anything else — an unknown key, a nil, a float, a value out of
// its field's range — makes it give up, and the library decodes the body
// instead, so the result is always the library's (TestDecodeRecordFast and
// FuzzDecodeRecordFast hold it to that). Like appendRecord, it is used only
// while the engine's structs have the layout it knows (fastEncode).

// mpReader reads msgpack values from a byte slice; ok turns false, for
// good, at the first thing it does not handle.
type mpReader struct {
	b  []byte
	ok bool
}

func (r *mpReader) byte1() byte {
	if !r.ok || len(r.b) == 0 {
		r.ok = false
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *mpReader) take(n int) []byte {
	if !r.ok || n < 0 || len(r.b) < n {
		r.ok = false
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

// length reads a length field of 1 << w bytes.
func (r *mpReader) length(w int) int {
	p := r.take(1 << w)
	switch w {
	case 0:
		if p != nil {
			return int(p[0])
		}
	case 1:
		if p != nil {
			return int(binary.BigEndian.Uint16(p))
		}
	case 2:
		if p != nil {
			return int(binary.BigEndian.Uint32(p))
		}
	}
	return 0
}

func (r *mpReader) mapLen() int {
	switch c := r.byte1(); {
	case c >= 0x80 && c <= 0x8f:
		return int(c & 0x0f)
	case c == 0xde:
		return r.length(1)
	case c == 0xdf:
		return r.length(2)
	}
	r.ok = false
	return 0
}

// arrayLen reads a non-empty array's length, at most maxMsgpackContainer
// (an empty one is left to the library, which decides between nil and
// empty).
func (r *mpReader) arrayLen() int { return r.arrayLenMax(maxMsgpackContainer) }

// arrayLenMax is arrayLen with the element cap max; the length must also
// fit in the bytes that remain, so what make allocates stays in proportion
// to the input.
func (r *mpReader) arrayLenMax(max int) int {
	n := 0
	switch c := r.byte1(); {
	case c >= 0x90 && c <= 0x9f:
		n = int(c & 0x0f)
	case c == 0xdc:
		n = r.length(1)
	case c == 0xdd:
		n = r.length(2)
	default:
		r.ok = false
	}
	if n == 0 || n > len(r.b) || n > max {
		r.ok = false
		return 0
	}
	return n
}

func (r *mpReader) str() string {
	n := 0
	switch c := r.byte1(); {
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == 0xd9:
		n = r.length(0)
	case c == 0xda:
		n = r.length(1)
	case c == 0xdb:
		n = r.length(2)
	default:
		r.ok = false
	}
	return string(r.take(n))
}

// int reads an integer in [lo, hi].
func (r *mpReader) int(lo, hi int64) int64 {
	var v int64
	switch c := r.byte1(); {
	case c <= 0x7f:
		v = int64(c)
	case c >= 0xe0:
		v = int64(int8(c))
	case c == 0xcc:
		v = int64(r.length(0))
	case c == 0xcd:
		v = int64(r.length(1))
	case c == 0xce:
		v = int64(r.length(2))
	case c == 0xcf:
		p := r.take(8)
		if p == nil || binary.BigEndian.Uint64(p) > math.MaxInt64 {
			r.ok = false
			return 0
		}
		v = int64(binary.BigEndian.Uint64(p))
	case c == 0xd0:
		v = int64(int8(r.length(0)))
	case c == 0xd1:
		v = int64(int16(r.length(1)))
	case c == 0xd2:
		v = int64(int32(r.length(2)))
	case c == 0xd3:
		if p := r.take(8); p != nil {
			v = int64(binary.BigEndian.Uint64(p))
		}
	default:
		r.ok = false
	}
	if v < lo || v > hi {
		r.ok = false
		return 0
	}
	return v
}

// uint64 reads an unsigned integer (any width the encoder uses).
func (r *mpReader) uint64() uint64 {
	if len(r.b) > 0 && r.b[0] == 0xcf {
		r.b = r.b[1:]
		if p := r.take(8); p != nil {
			return binary.BigEndian.Uint64(p)
		}
		return 0
	}
	return uint64(r.int(0, math.MaxInt64))
}

func (r *mpReader) bool() bool {
	switch r.byte1() {
	case 0xc3:
		return true
	case 0xc2:
		return false
	}
	r.ok = false
	return false
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
	r := mpReader{b: body, ok: true}
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
	if !r.ok || len(r.b) != 0 {
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
