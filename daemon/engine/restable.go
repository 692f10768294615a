package engine

import (
	"hash/maphash"
	"iter"
)

// resTable is the resource index by key. A Go map[string]*resource costs
// each entry a 24-byte slot (the key's string header and the pointer) and
// grows by doubling at 7/8 full, so an entry costs 28 to 55 bytes: 52 at
// 1,000,000 keys, more than any other index of a lease but the lease and
// its resource. This table keeps only the pointer (the key is the
// resource's own) and a one-byte tag: 9 bytes a slot (10 with a bucket's
// rounding to whole pages, below), 11 to 23 an entry.
//
// It is extendible hashing: a directory of 1<<depth bucket pointers,
// indexed by a key hash's top depth bits, each bucket an open-addressed
// table of resBucketSlots slots (linear probing from the hash's low bits)
// shared by the directory entries that agree on its own depth's top bits.
// A full bucket splits in two by its next top bit, doubling the directory
// when it was as deep, so growing rehashes one bucket (under four thousand
// keys, ~0.2 ms), never the whole table: no pause grows with the table. A lookup
// reads tags, contiguous bytes, and follows a pointer only where the tag
// matches (1 in 254 for another key).
//
// The hash is seeded at random per table (maphash), so no client can
// choose keys that collide; nothing reads the table in its own order where
// that could differ between replicas (each walks it to build something
// sorted, or to check invariants).
type resTable struct {
	seed  maphash.Seed
	dir   []*resBucket // 1<<depth entries
	depth uint8
	n     int
}

// A bucket is a large object (over 32 KiB: resBucketSize), which Go
// gives a span of its own. Buckets of 1,024 slots were 9,232 bytes, in the
// 9,472-byte size class that also holds garbage of the same size (the
// Lease slice an acquire_many of 64 answers with): each live bucket then
// pinned a span of dead ones that the runtime could not give back, ~14 B
// per lease of RSS at a million leases, ~18 MiB still held after every
// lease was released (BENCHMARKS.md "Scale (issue 18)", session 7 (rss7)).
// A bucket of 4,096 slots is 36,880 bytes, 40,960 with its pages: the
// pages cost 11%, under 2 B an entry, and come back whole when it goes.
const (
	resSlotBits    = 12
	resBucketSlots = 1 << resSlotBits
	resBucketSize  = 16 + resBucketSlots*9  // depth, n, gone, then 9 bytes a slot
	resBucketMax   = resBucketSlots * 7 / 8 // live and deleted slots that make a bucket full
	resTagEmpty    = 0
	resTagDeleted  = 0xff // a removed entry: probes step over it, inserts reuse it
)

type resBucket struct {
	depth uint8 // the top bits of the hash its keys agree on
	n     int32 // live entries
	gone  int32 // deleted slots
	tags  [resBucketSlots]uint8
	slots [resBucketSlots]*resource
}

func newResTable() resTable {
	return resTable{seed: maphash.MakeSeed(), dir: []*resBucket{new(resBucket)}}
}

// tagOf returns a live entry's tag, from hash bits that choose neither the
// bucket nor the first slot: 1..254.
func tagOf(h uint64) uint8 { return uint8((h>>resSlotBits)%254) + 1 }

func (t *resTable) bucket(h uint64) *resBucket {
	return t.dir[h>>(64-uint(t.depth))&(1<<t.depth-1)] // a shift by 64 is 0 in Go
}

// get returns the resource with key k, or nil.
func (t *resTable) get(k string) *resource {
	return t.find(maphash.String(t.seed, k), k)
}

// getBytes is get for a key being built in a buffer (no string made).
func (t *resTable) getBytes(k []byte) *resource {
	return t.find(maphash.Bytes(t.seed, k), string(k))
}

func (t *resTable) find(h uint64, k string) *resource {
	b := t.bucket(h)
	tag := tagOf(h)
	for i := h & (resBucketSlots - 1); ; i = (i + 1) & (resBucketSlots - 1) {
		switch b.tags[i] {
		case resTagEmpty:
			return nil
		case tag:
			if r := b.slots[i]; r.key == k {
				return r
			}
		}
	}
}

// put adds r, whose key must not be in the table.
func (t *resTable) put(r *resource) {
	h := maphash.String(t.seed, r.key)
	b := t.bucket(h)
	for b.n+b.gone >= resBucketMax {
		t.rebuild(b, h)
		b = t.bucket(h)
	}
	b.place(h, r)
	t.n++
}

// place puts r in the first free slot of its probe sequence.
func (b *resBucket) place(h uint64, r *resource) {
	i := h & (resBucketSlots - 1)
	for b.tags[i] != resTagEmpty && b.tags[i] != resTagDeleted {
		i = (i + 1) & (resBucketSlots - 1)
	}
	if b.tags[i] == resTagDeleted {
		b.gone--
	}
	b.tags[i], b.slots[i] = tagOf(h), r
	b.n++
}

// del removes r, if it is the table's entry for its key.
func (t *resTable) del(r *resource) {
	h := maphash.String(t.seed, r.key)
	b := t.bucket(h)
	tag := tagOf(h)
	for i := h & (resBucketSlots - 1); b.tags[i] != resTagEmpty; i = (i + 1) & (resBucketSlots - 1) {
		if b.tags[i] == tag && b.slots[i] == r {
			b.tags[i], b.slots[i] = resTagDeleted, nil
			b.n--
			b.gone++
			t.n--
			return
		}
	}
}

// rebuild makes room in the full bucket b, which holds hash h: it splits
// b in two by the next bit of the hash when at least half of b is live
// (doubling the directory when b is as deep as it), else copies b's live
// entries into a fresh bucket, which drops the deleted slots.
func (t *resTable) rebuild(b *resBucket, h uint64) {
	split := 2*b.n >= resBucketMax && b.depth < 64-resSlotBits-8 // bits left above the slot and tag bits
	if split && b.depth == t.depth {
		dir := make([]*resBucket, 2*len(t.dir))
		for i, x := range t.dir {
			dir[2*i], dir[2*i+1] = x, x
		}
		t.dir = dir
		t.depth++
	}
	// b's directory entries are the span starting at start.
	span := uint64(1) << (t.depth - b.depth)
	start := (h >> (64 - uint(t.depth)) & (1<<t.depth - 1)) &^ (span - 1)
	if !split {
		nb := &resBucket{depth: b.depth}
		for _, r := range b.slots {
			if r != nil {
				nb.place(maphash.String(t.seed, r.key), r)
			}
		}
		for i := start; i < start+span; i++ {
			t.dir[i] = nb
		}
		return
	}
	lo, hi := &resBucket{depth: b.depth + 1}, &resBucket{depth: b.depth + 1}
	for _, r := range b.slots {
		if r != nil {
			rh := maphash.String(t.seed, r.key)
			if rh>>(63-uint(b.depth))&1 == 0 {
				lo.place(rh, r)
			} else {
				hi.place(rh, r)
			}
		}
	}
	for i := start; i < start+span/2; i++ {
		t.dir[i] = lo
	}
	for i := start + span/2; i < start+span; i++ {
		t.dir[i] = hi
	}
}

// len returns the number of resources.
func (t *resTable) len() int { return t.n }

// all yields every resource, in no order that means anything.
func (t *resTable) all() iter.Seq[*resource] {
	return func(yield func(*resource) bool) {
		var last *resBucket
		for _, b := range t.dir {
			if b == last {
				continue // a bucket's directory entries are adjacent
			}
			last = b
			for _, r := range b.slots {
				if r != nil && !yield(r) {
					return
				}
			}
		}
	}
}
