package engine

import "encoding/binary"

// leaseTable is the lease index by id. Each lease id carries, mixed into
// its random bytes, the number of a slot in a dense table; a lookup decodes
// the slot and checks the full id there. A new lease takes the lowest free
// slot, so the table stays dense and an acquire and release touch memory
// that is already in the cache: with 100000 leases, a hash table keyed by
// random ids misses the cache (and the TLB) on every insert, and that alone
// costs more than the rest of an acquire.
//
// The lowest free slot depends only on which slots are taken, not on the
// order they were freed in, so two engines holding the same leases (one of
// them restored from a snapshot) hand out the same slot next: cluster mode
// needs that for every replica to give a grant the same lease id.
//
// A slot holds only the lease pointer (nil: free); the full id to check is
// the lease's own key, so a slot costs a lease 8 bytes, not 24.
type leaseTable struct {
	slots []*lease
	free  slotHeap // free slots, a min-heap; may hold taken ones (skipped)
	n     int
}

// maxLeaseSlot bounds the slot a recorded id may name (Apply, Restore).
const maxLeaseSlot = 1 << 26

// slotOf returns the slot a lease id names: its last four bytes, XORed with
// its first four so that ids still look random throughout.
func slotOf(k *leaseKey) uint32 {
	return binary.BigEndian.Uint32(k[12:]) ^ slotMask(k)
}

// withSlot writes slot into a random id.
func withSlot(k *leaseKey, slot uint32) {
	binary.BigEndian.PutUint32(k[12:], slot^slotMask(k))
}

// slotMask hides the slot in an id: the slot is XORed with a hash of the
// id's first 8 random bytes, so ids still look random (with a plain XOR of
// those bytes, a low slot showed as the first 8 hex digits repeated at the
// end). It is a fixed function, so ids read back from disk find their slot.
func slotMask(k *leaseKey) uint32 {
	x := binary.BigEndian.Uint64(k[:8]) // splitmix64's finalizer
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return uint32(x)
}

// alloc returns the lowest free slot.
func (t *leaseTable) alloc() uint32 {
	for len(t.free) > 0 {
		if s := t.free.pop(); t.slots[s] == nil {
			return s
		}
	}
	t.slots = append(t.slots, nil)
	return uint32(len(t.slots) - 1)
}

// get returns the lease with id k, or nil.
func (t *leaseTable) get(k leaseKey) *lease {
	s := slotOf(&k)
	if int64(s) >= int64(len(t.slots)) {
		return nil
	}
	if l := t.slots[s]; l != nil && l.key == k {
		return l
	}
	return nil
}

// put files a lease under id k (its key) in the slot k names. It reports false when
// that slot is taken or beyond maxLeaseSlot (a recorded id that cannot be
// right).
func (t *leaseTable) put(k leaseKey, l *lease) bool {
	s := slotOf(&k)
	if s >= maxLeaseSlot {
		return false
	}
	for uint32(len(t.slots)) <= s {
		t.free.push(uint32(len(t.slots)))
		t.slots = append(t.slots, nil)
	}
	if t.slots[s] != nil {
		return false
	}
	l.key = k
	t.slots[s] = l
	t.n++
	return true
}

// del removes the lease with id k, if any.
func (t *leaseTable) del(k leaseKey) {
	s := slotOf(&k)
	if int64(s) >= int64(len(t.slots)) || t.slots[s] == nil || t.slots[s].key != k {
		return
	}
	t.slots[s] = nil
	t.free.push(s)
	t.n--
}

// len returns the number of leases.
func (t *leaseTable) len() int { return t.n }

// each calls fn for every lease, in slot order.
func (t *leaseTable) each(fn func(*lease)) {
	for i := range t.slots {
		if l := t.slots[i]; l != nil {
			fn(l)
		}
	}
}

// slotHeap is a binary min-heap of slot numbers.
type slotHeap []uint32

func (h *slotHeap) push(s uint32) {
	*h = append(*h, s)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if q[p] <= q[i] {
			break
		}
		q[p], q[i] = q[i], q[p]
		i = p
	}
}

// pop removes and returns the lowest slot; the heap must not be empty.
func (h *slotHeap) pop() uint32 {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q = q[:last]
	for i := 0; ; {
		c := 2*i + 1
		if c >= len(q) {
			break
		}
		if c+1 < len(q) && q[c+1] < q[c] {
			c++
		}
		if q[i] <= q[c] {
			break
		}
		q[i], q[c] = q[c], q[i]
		i = c
	}
	*h = q
	return top
}
