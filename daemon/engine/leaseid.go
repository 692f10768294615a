package engine

import (
	"encoding/binary"

	"github.com/google/uuid"
)

// leaseKey is a lease id as its 16 bytes, as the lease table (leaseTable)
// stores and compares it: inline, without following a string.
type leaseKey [16]byte

// newLeaseID returns a new lease id, as bytes and as text: a version 4
// UUID whose random bytes also name a free slot of the lease table (see
// leaseTable), leaving 90 random bits.
func (e *Engine) newLeaseID() (leaseKey, string) {
	var u uuid.UUID
	binary.LittleEndian.PutUint64(u[:8], e.ids.Uint64())
	binary.LittleEndian.PutUint64(u[8:], e.ids.Uint64())
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	k := leaseKey(u)
	withSlot(&k, e.leases.alloc())
	return k, uuid.UUID(k).String()
}

// parseLeaseKey parses the canonical text of a lease id (lower-case hex,
// 8-4-4-4-12), the only form the engine hands out; any other text names no
// lease.
func parseLeaseKey(s string) (k leaseKey, ok bool) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return k, false
	}
	j := 0
	for i := 0; i < 36; {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
			continue
		}
		hi, lo := unhex(s[i]), unhex(s[i+1])
		if hi > 15 || lo > 15 {
			return k, false
		}
		k[j] = hi<<4 | lo
		j++
		i += 2
	}
	return k, true
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return 255
}

// lookup returns the lease with the given id text, or nil.
func (e *Engine) lookup(id string) *lease {
	k, ok := parseLeaseKey(id)
	if !ok {
		return nil
	}
	return e.leases.get(k)
}
