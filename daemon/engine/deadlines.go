package engine

// leaseHeap is the lease expiry queue: a 4-ary min-heap ordered by expiry
// (then fence, so ties are deterministic), each lease knowing its index so
// that a release removes it and a heartbeat fixes it in place. The expiry
// is kept inline in the entries, so sifting compares without touching the
// leases but for equal expiries (the fence breaks the tie; keeping it
// inline too made an entry 24 bytes, not 16); four children per node halve
// the depth of a binary heap. Together these keep acquire and release flat
// with 100000 leases (container/heap would compare through an interface
// and the lease pointers, missing the cache at every level).
type leaseHeap []deadline

type deadline struct {
	at int64
	l  *lease
}

func (d *deadline) before(o *deadline) bool {
	return d.at < o.at || d.at == o.at && d.l.Fence < o.l.Fence
}

// push adds a lease.
func (h *leaseHeap) push(l *lease) {
	*h = append(*h, deadline{at: l.ExpiresAt, l: l})
	h.up(len(*h) - 1)
}

// remove takes out the entry at index i.
func (h *leaseHeap) remove(i int) {
	s := *h
	last := len(s) - 1
	s[i].l.heapIdx = -1
	if i != last {
		s[i] = s[last]
		s[i].l.heapIdx = int32(i)
	}
	s[last] = deadline{}
	*h = shrink(s[:last])
	if i != last {
		if !h.down(i) {
			h.up(i)
		}
	}
}

// fix restores the order after the lease at index i changed its expiry.
func (h leaseHeap) fix(i int) {
	h[i].at = h[i].l.ExpiresAt
	if !h.down(i) {
		h.up(i)
	}
}

func (h leaseHeap) up(i int) {
	d := h[i]
	for i > 0 {
		p := (i - 1) / 4
		if !d.before(&h[p]) {
			break
		}
		h[i] = h[p]
		h[i].l.heapIdx = int32(i)
		i = p
	}
	h[i] = d
	d.l.heapIdx = int32(i)
}

// down sifts the entry at i towards the leaves and reports whether it
// moved.
func (h leaseHeap) down(i int) bool {
	d := h[i]
	start := i
	n := len(h)
	for {
		c := 4*i + 1
		if c >= n {
			break
		}
		m := c
		for k := c + 1; k < c+4 && k < n; k++ {
			if h[k].before(&h[m]) {
				m = k
			}
		}
		if !h[m].before(&d) {
			break
		}
		h[i] = h[m]
		h[i].l.heapIdx = int32(i)
		i = m
	}
	h[i] = d
	d.l.heapIdx = int32(i)
	return i > start
}

// countDue counts the leases with expiry <= now without popping them,
// visiting only those and their children: O(due).
func (h leaseHeap) countDue(now int64) int {
	n := 0
	h.eachDue(now, func(*lease) { n++ })
	return n
}

// eachDue calls fn for every lease with expiry <= now, in no particular
// order, visiting only those and their children: O(due).
func (h leaseHeap) eachDue(now int64, fn func(*lease)) {
	if len(h) == 0 || h[0].at > now {
		return
	}
	stack := []int{0}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if i >= len(h) || h[i].at > now {
			continue
		}
		fn(h[i].l)
		stack = append(stack, 4*i+1, 4*i+2, 4*i+3, 4*i+4)
	}
}

// shrinkMin is the least capacity shrink gives back.
const shrinkMin = 256

// shrink returns s in a new array of twice its length once it fills no
// more than a quarter of a capacity of at least shrinkMin: the queues and
// lists that grew with a million leases give that memory back when the
// leases go, rather than keep their largest size for good. Halving at a
// quarter keeps the copying amortised O(1) per removal.
func shrink[T any](s []T) []T {
	if c := cap(s); c < shrinkMin || len(s) > c/4 {
		return s
	}
	return append(make([]T, 0, 2*len(s)), s...)
}
