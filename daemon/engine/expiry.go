package engine

// leaseHeap orders leases by expiry (then fence, so ties are deterministic);
// each lease knows its index so a heartbeat fixes it in place.
type leaseHeap []*lease

func (h leaseHeap) Len() int { return len(h) }
func (h leaseHeap) Less(i, j int) bool {
	if h[i].ExpiresAt != h[j].ExpiresAt {
		return h[i].ExpiresAt < h[j].ExpiresAt
	}
	return h[i].Fence < h[j].Fence
}
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *leaseHeap) Push(x any) {
	l := x.(*lease)
	l.heapIdx = len(*h)
	*h = append(*h, l)
}
func (h *leaseHeap) Pop() any {
	old := *h
	n := len(old) - 1
	l := old[n]
	old[n] = nil
	*h = old[:n]
	l.heapIdx = -1
	return l
}

// countDue counts the leases with ExpiresAt <= now without popping them,
// visiting only those and their direct children: O(due).
func (h leaseHeap) countDue(now int64) int {
	if len(h) == 0 || h[0].ExpiresAt > now {
		return 0
	}
	n := 0
	stack := []int{0}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if i >= len(h) || h[i].ExpiresAt > now {
			continue
		}
		n++
		stack = append(stack, 2*i+1, 2*i+2)
	}
	return n
}

// waiterHeap orders queued requests by their wait deadline (then id).
type waiterHeap []*waiter

func (h waiterHeap) Len() int { return len(h) }
func (h waiterHeap) Less(i, j int) bool {
	if h[i].deadline != h[j].deadline {
		return h[i].deadline < h[j].deadline
	}
	return h[i].id < h[j].id
}
func (h waiterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *waiterHeap) Push(x any) {
	w := x.(*waiter)
	w.heapIdx = len(*h)
	*h = append(*h, w)
}
func (h *waiterHeap) Pop() any {
	old := *h
	n := len(old) - 1
	w := old[n]
	old[n] = nil
	*h = old[:n]
	w.heapIdx = -1
	return w
}

// NextDeadline returns the earliest time at which Expire has work: a lease
// expiry, a queued request's wait deadline, or queued requests to decide
// again after an acquire changed their resource. ok is false when there is
// none. It may be in the past: Expire is due now.
func (e *Engine) NextDeadline() (at int64, ok bool) {
	if len(e.dirty) > 0 {
		return e.settleAt, true
	}
	if len(e.leaseDeadlines) > 0 {
		at, ok = e.leaseDeadlines[0].ExpiresAt, true
	}
	if len(e.waiterDeadlines) > 0 {
		if d := e.waiterDeadlines[0].deadline; !ok || d < at {
			at, ok = d, true
		}
	}
	return at, ok
}

// Expire removes every lease with ExpiresAt <= now, decides again the
// requests queued on their resources (oldest first), then answers WAIT to
// queued requests whose deadline has passed. It returns how many leases it
// removed and the wake-ups, in the order they were decided.
func (e *Engine) Expire(now int64) (int, []Wakeup) {
	n := 0
	var ids []string
	for len(e.leaseDeadlines) > 0 && e.leaseDeadlines[0].ExpiresAt <= now {
		l := e.leaseDeadlines[0]
		if e.cfg.Journal {
			ids = append(ids, l.ID)
		}
		e.removeLease(l)
		n++
	}
	e.expirations += uint64(n)
	if len(ids) > 0 {
		e.record(Record{Kind: RecExpire, Time: now, LeaseIDs: ids})
	}
	wake := e.settle(now, nil)
	for len(e.waiterDeadlines) > 0 && e.waiterDeadlines[0].deadline <= now {
		w := e.waiterDeadlines[0]
		wake = append(wake, Wakeup{Waiter: w.id, Result: e.timeout(now, w)})
		e.dropWaiter(w)
	}
	return n, wake
}

// EvictExpired is the evict_expired op: Expire now, returning how many
// expired leases this call removed.
func (e *Engine) EvictExpired(now int64) (int, []Wakeup) { return e.Expire(now) }
