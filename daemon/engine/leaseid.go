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

// ReseedLeaseIDs restarts the lease id generator from seed. The ids of the
// grants that follow are then a function of seed and of the leases held
// (which slots are free) alone, so engines fed the same calls after the
// same seed hand out the same ids: cluster mode reseeds every replica from
// each command's revision. New seeds the generator from crypto/rand.
func (e *Engine) ReseedLeaseIDs(seed [32]byte) {
	e.ids.Seed(seed)
}

// parseLeaseKey parses the canonical text of a lease id (lower-case hex,
// 8-4-4-4-12), the only form the engine hands out; any other text names no
// lease.
func parseLeaseKey(s string) (k leaseKey, ok bool) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return k, false
	}
	var bad byte
	for j, i := range hexPairs {
		hi, lo := hexValue[s[i]], hexValue[s[i+1]]
		bad |= hi | lo
		k[j] = hi<<4 | lo&0x0f
	}
	return k, bad&0xf0 == 0
}

// hexPairs are the offsets of the 16 byte pairs in a canonical UUID text.
var hexPairs = [16]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// hexValue maps a lower-case hex digit to its value and any other byte to
// 0xff, so one OR over all digits tells whether one was bad.
var hexValue = func() (t [256]byte) {
	for c := range t {
		t[c] = 0xff
	}
	for c := byte('0'); c <= '9'; c++ {
		t[c] = c - '0'
	}
	for c := byte('a'); c <= 'f'; c++ {
		t[c] = c - 'a' + 10
	}
	return t
}()

// lookup returns the lease with the given id text, or nil.
func (e *Engine) lookup(id string) *lease {
	k, ok := parseLeaseKey(id)
	if !ok {
		return nil
	}
	return e.leases.get(k)
}
