package engine

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/klockd/klock/protocol"
)

// boundProc is one process that leases or queued requests are bound to.
// The leases point at proc, so binding costs a lease one pointer and one
// index, whatever the number of leases of the process. A process with one
// lease, the common case, costs one allocation: leases starts in first.
type boundProc struct {
	proc    Process   // the leases' Bound points here; never changed
	leases  []*lease  // present leases bound to it (expired ones too, until removed)
	waiters []*waiter // queued requests bound to it
	first   [1]*lease // leases' first backing array
}

// procFor returns the table entry of p, creating it.
func (e *Engine) procFor(p Process) *boundProc {
	bp := e.procs[p]
	if bp == nil {
		if e.procs == nil {
			e.procs = make(map[Process]*boundProc)
		}
		bp = &boundProc{proc: p}
		bp.leases = bp.first[:0]
		e.procs[p] = bp
	} else if bp == e.spareProc {
		e.spareProc = nil
	}
	return bp
}

// bindLease files a lease under its process, bp (whose proc is the
// lease's Bound).
func (e *Engine) bindLease(x *lease, bp *boundProc) {
	x.setProcIdx(int32(len(bp.leases)))
	bp.leases = append(bp.leases, x)
}

// unbindLease takes a lease out of its process's list, dropping the
// process when nothing is bound to it any more.
func (e *Engine) unbindLease(x *lease) {
	bp := e.procs[*x.own.bound]
	last := len(bp.leases) - 1
	i := x.procIdx()
	bp.leases[i] = bp.leases[last]
	bp.leases[i].setProcIdx(i)
	bp.leases[last] = nil
	bp.leases = bp.leases[:last]
	e.dropProcIfUnused(bp)
}

// bindWaiter files a queued request under its process.
func (e *Engine) bindWaiter(w *waiter) {
	bp := e.procFor(*w.bind)
	w.bind = &bp.proc
	bp.waiters = append(bp.waiters, w)
}

// unbindWaiter takes a queued request out of its process's list.
func (e *Engine) unbindWaiter(w *waiter) {
	bp := e.procs[*w.bind]
	if i := slices.Index(bp.waiters, w); i >= 0 {
		bp.waiters = slices.Delete(bp.waiters, i, i+1)
	}
	e.dropProcIfUnused(bp)
}

func (e *Engine) dropProcIfUnused(bp *boundProc) {
	if len(bp.leases) != 0 || len(bp.waiters) != 0 {
		return
	}
	// The entry emptied last stays in the table, as the spare, unless its
	// list grew: a process that takes and releases one lease again and
	// again keeps one entry, not a new one (and two table writes) each
	// time. The spare counts as absent.
	if cap(bp.leases) != len(bp.first) {
		delete(e.procs, bp.proc)
		return
	}
	if sp := e.spareProc; sp != nil && sp != bp {
		delete(e.procs, sp.proc)
	}
	bp.waiters = nil
	e.spareProc = bp
}

// boundEntry returns p's table entry, nil when nothing is bound to p.
func (e *Engine) boundEntry(p Process) *boundProc {
	if bp := e.procs[p]; bp != e.spareProc {
		return bp
	}
	return nil
}

// ProcessEnded ends everything bound to process p, which the daemon saw
// end: every lease bound to it is removed exactly as a release removes it
// (one RecProcessEnd record lists them, and the requests queued on their
// resources are decided again, an end event per lease for watchers), and
// its queued requests are answered with WAIT, since nobody is left to use
// a grant. It returns how many active leases it ended and the wake-ups. A
// process nothing is bound to is a no-op: no record.
func (e *Engine) ProcessEnded(now int64, p Process) (int, []Wakeup) {
	n, wake, _ := e.ProcessEndedStep(now, p, 0)
	return n, wake
}

// ProcessEndedStep is ProcessEnded in steps of bounded work, as
// EndSessionStep is EndSession. While p has more than max leases, or more
// than max queued requests, a call does one step and returns more = true:
// it answers up to max of the queued requests and ends up to max of the
// leases (the last max of its list, in fence order among themselves; one
// RecProcessEnd record lists them). The call that finds at most max of
// each left ends the rest and returns more = false. The caller calls
// again until then, letting other calls in between. max 0 means no bound.
func (e *Engine) ProcessEndedStep(now int64, p Process, max int) (n int, wake []Wakeup, more bool) {
	bp := e.boundEntry(p)
	if bp == nil {
		return 0, nil, false
	}
	more = max > 0 && (len(bp.leases) > max || len(bp.waiters) > max)
	if max == 0 {
		max = len(bp.leases) + len(bp.waiters)
	}
	for len(bp.waiters) > 0 && len(wake) < max {
		w := bp.waiters[0]
		v := e.decide(now, w.agent, w.session, w.priority, w.targets, w)
		d := e.denial(now, w.agent, w.session, &v)
		d.Reason = protocol.ReasonWait
		d.Message = fmt.Sprintf("process %d, which this request was bound to, has ended; the request was dropped", p.PID)
		e.countDenial(protocol.ReasonWait)
		wake = append(wake, Wakeup{Waiter: w.id, Result: Result{Denial: d}})
		e.dropWaiter(w) // removes it from bp.waiters; may drop bp
	}
	proc := &bp.proc
	// The list's tail: removing it leaves the rest of the list in place.
	step := bp.leases[len(bp.leases)-min(max, len(bp.leases)):]
	n, ids := e.removeInFenceOrder(now, slices.Clone(step), true, EvEnd) // may drop bp
	e.exitReleases += uint64(n)
	if len(ids) > 0 {
		e.record(Record{Kind: RecProcessEnd, Time: now, Bound: proc, LeaseIDs: ids})
	}
	return n, e.settle(now, wake), more
}

// BoundLeases returns the leases bound to p that have no ttl (ExpiresAt
// Never), in fence order: in cluster mode they are released when the node
// that watched p is gone, since nothing else would ever end them.
func (e *Engine) BoundLeases(p Process) []Lease {
	bp := e.boundEntry(p)
	if bp == nil {
		return nil
	}
	var out []Lease
	for _, l := range bp.leases {
		if l.ExpiresAt == Never {
			out = append(out, e.public(l))
		}
	}
	slices.SortFunc(out, func(x, y Lease) int { return cmp.Compare(x.Fence, y.Fence) })
	return out
}

// ProcessBound reports whether a lease or a queued request is bound to p.
func (e *Engine) ProcessBound(p Process) bool {
	return e.boundEntry(p) != nil
}

// BoundProcesses returns every process that leases or queued requests are
// bound to, sorted by pid then start time. After a restart the daemon
// checks each is still alive, and ends the ones that are not.
func (e *Engine) BoundProcesses() []Process {
	out := make([]Process, 0, e.boundCount())
	for p, bp := range e.procs {
		if bp != e.spareProc {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Process) int {
		return cmp.Or(cmp.Compare(a.PID, b.PID), cmp.Compare(a.Start, b.Start), cmp.Compare(a.Boot, b.Boot))
	})
	return out
}

// boundCount returns how many processes something is bound to.
func (e *Engine) boundCount() int {
	if e.spareProc != nil {
		return len(e.procs) - 1
	}
	return len(e.procs)
}
