package engine

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
		at, ok = e.leaseDeadlines[0].at, true
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
	for len(e.leaseDeadlines) > 0 && e.leaseDeadlines[0].at <= now {
		l := e.leaseDeadlines[0].l
		if e.cfg.Journal {
			ids = append(ids, l.ID)
		}
		e.emitLease(EvExpire, now, &l.Lease)
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
