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
	n, wake, _ := e.ExpireStep(now, 0)
	return n, wake
}

// ExpireStep is Expire in steps of bounded work: it removes at most max
// expired leases (earliest expiry first) and times out at most max queued
// requests, and reports more = true when some were left for another call
// (NextDeadline is then due). max 0 means no bound.
func (e *Engine) ExpireStep(now int64, max int) (int, []Wakeup, bool) {
	if max == 0 {
		max = len(e.leaseDeadlines) + len(e.waiterDeadlines)
	}
	n := 0
	var ids []string
	for len(e.leaseDeadlines) > 0 && e.leaseDeadlines[0].at <= now && n < max {
		l := e.leaseDeadlines[0].l
		if e.cfg.Journal {
			ids = append(ids, l.id())
		}
		e.emitLeaseOf(EvExpire, now, l)
		e.removeLease(l)
		n++
	}
	e.expirations += uint64(n)
	if len(ids) > 0 {
		e.record(Record{Kind: RecExpire, Time: now, LeaseIDs: ids})
	}
	wake := e.settle(now, nil)
	timedOut := 0
	for len(e.waiterDeadlines) > 0 && e.waiterDeadlines[0].deadline <= now && timedOut < max {
		w := e.waiterDeadlines[0]
		wake = append(wake, Wakeup{Waiter: w.id, Result: e.timeout(now, w)})
		e.dropWaiter(w)
		timedOut++
	}
	more := len(e.leaseDeadlines) > 0 && e.leaseDeadlines[0].at <= now ||
		len(e.waiterDeadlines) > 0 && e.waiterDeadlines[0].deadline <= now
	return n, wake, more
}

// EvictExpired is the evict_expired op: Expire now, returning how many
// expired leases this call removed.
func (e *Engine) EvictExpired(now int64) (int, []Wakeup) { return e.Expire(now) }
