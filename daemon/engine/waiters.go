package engine

import (
	"container/heap"
	"fmt"
	"slices"
	"strings"

	"github.com/klockd/klock/protocol"
)

// waiter is a queued request: an acquire whose verdict was WAIT, parked
// until it is granted, turns DIE, times out or is cancelled.
type waiter struct {
	id       WaiterID
	agent    *agent
	session  string
	priority int64 // the agent's priority; stable while it waits
	targets  []target
	res      []*resource // resource of each target
	ttl      int64
	idem     string
	bind     *Process // the process its leases will be bound to, or nil
	uid      uint32
	pid      int32
	since    int64 // when it was queued
	deadline int64 // when it times out with WAIT
	heapIdx  int
	agentIdx int
	pass     uint64 // last settle pass that decided it
}

// queued is one entry of a resource's queue: a waiter and the predicate it
// asks for there.
type queued struct {
	w    *waiter
	pred Predicate
}

// before orders queue entries: lower priority value (older) first, then
// arrival.
func (q queued) before(w *waiter) bool {
	if q.w.priority != w.priority {
		return q.w.priority < w.priority
	}
	return q.w.id < w.id
}

// enqueue parks a request whose verdict is WAIT.
func (e *Engine) enqueue(now int64, c Caller, a *agent, req *AcquireRequest, targets []target) *waiter {
	e.nextWaiter++
	w := &waiter{
		// The strings are cloned: a request's share the bytes of its frame.
		id: e.nextWaiter, agent: a, session: strings.Clone(req.SessionID), priority: a.priority,
		targets: slices.Clone(targets),
		ttl:     req.TTL, idem: strings.Clone(req.Idem), uid: c.UID, pid: c.PID, bind: req.Bind,
		since: now, deadline: now + req.WaitTimeout,
	}
	for i := range w.targets {
		w.targets[i].clientPath = strings.Clone(w.targets[i].clientPath)
	}
	e.park(w)
	return w
}

// park files a new waiter in the queues of its targets (oldest first), on
// its agent and its bound process, in the waiter index and in the deadline
// heap.
func (e *Engine) park(w *waiter) {
	a := w.agent
	w.res = make([]*resource, len(w.targets))
	w.agentIdx = len(a.waiters)
	if w.bind != nil {
		e.bindWaiter(w)
	}
	for i, t := range w.targets {
		r := e.resourceFor(t.key)
		w.res[i] = r
		w.targets[i].res = r
		x := r.extra()
		at := len(x.q)
		for j, q := range x.q {
			if !q.before(w) {
				at = j
				break
			}
		}
		x.q = slices.Insert(x.q, at, queued{w: w, pred: t.pred})
		e.queueBelow(r, a, classOf(t.pred), +1)
	}
	a.waiters = append(a.waiters, w)
	e.waiters[w.id] = w
	heap.Push(&e.waiterDeadlines, w)
}

// dropWaiter removes a queued request from every index.
func (e *Engine) dropWaiter(w *waiter) {
	delete(e.waiters, w.id)
	if w.heapIdx >= 0 {
		heap.Remove(&e.waiterDeadlines, w.heapIdx)
	}
	a := w.agent
	last := len(a.waiters) - 1
	a.waiters[w.agentIdx] = a.waiters[last]
	a.waiters[w.agentIdx].agentIdx = w.agentIdx
	a.waiters[last] = nil
	a.waiters = a.waiters[:last]
	for i, r := range w.res {
		e.queueBelow(r, a, classOf(w.targets[i].pred), -1)
		r.x.q = slices.DeleteFunc(r.x.q, func(q queued) bool { return q.w == w })
		e.dropIfIdle(r)
	}
	if w.bind != nil {
		e.unbindWaiter(w)
	}
	e.dropLeftover(a)
}

// markDirty notes that a resource's queue must be decided again.
func (e *Engine) markDirty(r *resource) {
	if !r.isDirty {
		r.isDirty = true
		e.dirty = append(e.dirty, r)
	}
}

// requeue marks for deciding again the queues overlapping the resources a
// new request was just granted or queued on: a request queued there may
// now wait for a senior (it must DIE) or for its own agent (CONFLICT).
// Acquire cannot return wake-ups, so the work is made due now: NextDeadline
// reports it and the daemon's timer calls Expire, which answers them.
func (e *Engine) requeue(now int64, targets []target, self *waiter) {
	if len(e.dirty) == 0 {
		e.settleAt = now
	}
	for _, t := range targets {
		if t.res != nil {
			e.markOverlapping(t.res, self)
		}
	}
}

func othersQueued(r *resource, self *waiter) bool {
	for _, q := range r.queue() {
		if q.w != self {
			return true
		}
	}
	return false
}

// settle decides again, oldest first, the requests queued on every resource
// marked dirty (a lease overlapping it ended or was granted): grants and
// DIEs are answered and leave the queue, WAITs stay. A grant marks the
// queues overlapping its resources dirty too, so no queued junior keeps
// waiting behind a senior's new lease.
func (e *Engine) settle(now int64, wake []Wakeup) []Wakeup {
	e.pass++
	for i := 0; i < len(e.dirty); i++ {
		r := e.dirty[i]
		r.isDirty = false
		for j := 0; j < len(r.queue()); {
			w := r.queue()[j].w
			if w.pass == e.pass {
				j++
				continue
			}
			w.pass = e.pass
			v := e.decide(now, w.agent, w.session, w.priority, w.targets, w)
			if e.settled != nil {
				e.settled(now, w, &v)
			}
			switch v.reason {
			case protocol.ReasonWait:
				j++
				continue
			case "":
				ls := e.grant(now, w.uid, w.pid, w.agent, w.session, w.targets, w.ttl, w.idem, w.bind)
				// Requests decided before in this pass may now have to
				// die (or conflict) because of this grant: the queues it
				// overlaps are decided again, and all of their requests
				// with them.
				e.pass++
				for _, o := range w.res {
					e.markOverlapping(o, w)
				}
				wake = append(wake, Wakeup{Waiter: w.id, Result: Result{Granted: true, Leases: ls}})
			default:
				wake = append(wake, Wakeup{Waiter: w.id, Result: Result{Denial: e.deny(now, w.agent, w.session, &v)}})
			}
			e.dropWaiter(w) // removes r.queue()[j]; the next entry moves to j
		}
		e.dropIfIdle(r)
	}
	clear(e.dirty)
	e.dirty = e.dirty[:0]
	return wake
}

// timeout answers a queued request whose wait deadline has passed: WAIT,
// with what it waited for.
func (e *Engine) timeout(now int64, w *waiter) Result {
	v := e.decide(now, w.agent, w.session, w.priority, w.targets, w)
	e.countDenial(protocol.ReasonWait)
	d := e.denial(now, w.agent, w.session, &v)
	why := d.Message
	if v.reason != protocol.ReasonWait {
		// Cannot happen: every change that lets a queued request through
		// or turns it DIE marks its resource for settle, which runs first.
		why = "its resources were busy"
	}
	d.Reason = protocol.ReasonWait
	d.Message = fmt.Sprintf("%s waited %d ms without being granted; %s", w.agent.id, now-w.since, why)
	return Result{Denial: d}
}

// answerQueued answers every request queued on r with reason
// RESOURCE_LOCKED, since by (r or a subtree key above it) was frozen, and
// drops it.
func (e *Engine) answerQueued(now int64, r *resource, by string, wake []Wakeup) []Wakeup {
	for len(r.queue()) > 0 {
		w := r.queue()[0].w
		v := verdict{reason: protocol.ReasonResourceLocked, step: StepFrozen, key: r.key, pred: r.queue()[0].pred, byKey: by}
		e.countDenial(v.reason)
		wake = append(wake, Wakeup{Waiter: w.id, Result: Result{Denial: e.denial(now, w.agent, w.session, &v)}})
		e.dropWaiter(w)
	}
	return wake
}

// Cancel drops a queued request (its connection closed). It is a no-op for
// an unknown or already answered waiter. Dropping a request never lets
// another one through, so the wake-ups are normally empty.
func (e *Engine) Cancel(now int64, id WaiterID) []Wakeup {
	w := e.waiters[id]
	if w == nil {
		return nil
	}
	e.dropWaiter(w)
	return e.settle(now, nil)
}

// CancelAll drops every queued request (shutdown) and returns their ids in
// ascending order.
func (e *Engine) CancelAll(now int64) []WaiterID {
	if len(e.waiters) == 0 {
		return nil
	}
	ids := make([]WaiterID, 0, len(e.waiters))
	for id := range e.waiters {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		e.dropWaiter(e.waiters[id])
	}
	return ids
}
