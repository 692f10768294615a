package server

import (
	"context"
	"runtime/trace"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// Every state change takes one path, commit, and every read another, read,
// so that no handler can skip a step.

// commit runs ch, asked by request id on c, through the local driver and
// answers it: see commitLocked. The answer is appended after s.mu is
// released, tagged with the journal sequence it must wait for.
//
// A long change (outcome.more) is applied in steps with s.mu released in
// between, so that other requests are served while it runs; its answer
// sums the steps' counts and waits for the last step's records.
func (s *Server) commit(c *conn, id uint64, ch *change) {
	if s.rep.log != nil {
		s.propose(c, id, ch)
		return
	}
	o, seq := s.commitStep(c, id, ch, true)
	for o.more && o.err == nil {
		s.turns.yield() // the requests waiting for s.mu go first
		next, nseq := s.commitStep(c, id, ch, false)
		o, seq = sumSteps(o, next), nseq
	}
	switch {
	case o.err != nil:
		c.answerErr(id, o.err, seq)
	case o.parked != 0:
		// Answered later by a wake-up, a timeout or shutdown.
	default:
		c.appendResult(id, o.result, seq)
	}
}

// errLocalInCluster answers a change that reached the local driver in
// cluster mode (commitLocked), which would be a bug.
var errLocalInCluster = &protocol.Error{Code: protocol.CodeInternal,
	Message: "klock: internal error: a change bypassed the cluster log; nothing was changed"}

// commitStep takes s.mu and runs ch through commitLocked, after
// admitLocked for the first step.
func (s *Server) commitStep(c *conn, id uint64, ch *change, first bool) (outcome, uint64) {
	s.turns.lock(&s.mu)
	defer s.mu.Unlock()
	if trace.IsEnabled() {
		// klockd --trace: a region "mu" is a hold of the engine lock.
		defer trace.StartRegion(context.Background(), "mu").End()
	}
	if first {
		if err := s.admitLocked(c, ch); err != nil {
			return outcome{err: err}, s.lastSeq
		}
	}
	return s.commitLocked(c, id, ch)
}

// sumSteps is the outcome of a long change so far (prev) and one more
// step (next): next's, with the counts of both in its answer. An error in
// a step is the answer, though the steps before it were made.
func sumSteps(prev, next outcome) outcome {
	if next.err != nil {
		return next
	}
	switch r := next.result.(type) {
	case *protocol.EndSessionResult:
		r.Released += prev.result.(*protocol.EndSessionResult).Released
	case *protocol.EvictResult:
		r.Evicted += prev.result.(*protocol.EvictResult).Evicted
	}
	return next
}

// admitLocked refuses a change before it reaches the engine: an acquire
// once shutdown has answered the parked ones (nothing would answer it), or
// one that would park past MaxInflight on its connection. A bound acquire's
// process is watched from here on, so that it cannot end unnoticed between
// the grant and the watch (refused past the pidfd limit). The caller holds
// s.mu.
func (s *Server) admitLocked(c *conn, ch *change) error {
	if ch.op != protocol.OpAcquire && ch.op != protocol.OpAcquireMany {
		return nil
	}
	if s.closed {
		return errShuttingDown
	}
	if ch.args.WaitTimeout > 0 && len(c.waiters) >= s.cfg.MaxInflight {
		return &protocol.Error{Code: protocol.CodeResourceExhausted,
			Message: "klock: too many requests in flight on this connection; at most " + itoa(s.cfg.MaxInflight) + " may wait at once"}
	}
	if ch.bind != nil {
		return s.watchLocked(c, *ch.bind)
	}
	return nil
}

// commitLocked is the local driver of a state change: it stamps ch with the
// engine time, applies it, hands its records to the journal, parks the
// caller's acquire (c, id) when it must wait, answers the parked acquires
// the change decided, and re-arms the expiry timer. It returns the outcome
// and the journal sequence the answers depend on; the caller answers c.
// c is nil for the daemon's own changes. A panic anywhere in it breaks the
// server (panic.go). The caller holds s.mu.
func (s *Server) commitLocked(c *conn, id uint64, ch *change) (o outcome, seq uint64) {
	if s.rep.log != nil {
		// A bug: in cluster mode changes are proposed (commit,
		// ownChangeLocked) and applied in the log's order by every node;
		// one applied here would change this node alone.
		s.log.Error("a change bypassed the cluster log; refused", "op", ch.op)
		return outcome{err: errLocalInCluster}, s.lastSeq
	}
	if s.broken.Load() != nil {
		return outcome{err: errBroken}, s.lastSeq
	}
	if err := s.unavailableLocked(); err != nil {
		return outcome{err: err}, s.lastSeq
	}
	recorded := false
	defer func() {
		if r := recover(); r != nil {
			o, seq = s.breakLocked(ch, r, recorded), s.lastSeq
		}
	}()
	ch.at = s.nowMS()
	if ch.steps() {
		// A step of a long change: sized by how long the last one held
		// s.mu, timed to size the next (stepsize.go).
		ch.step = s.steps.size()
		defer func(t0 time.Time) { s.steps.took(ch.step, time.Since(t0)) }(time.Now())
	}
	o = applyChange(s.eng, ch)
	if midChangeHook != nil {
		midChangeHook(ch.op)
	}
	recs := s.eng.Records()
	// Every record of every state change passes here, with the outcome that
	// caused it: the one place to tell watchers about it.
	seq = s.journalLocked(recs)
	recorded = true
	if len(s.subs) > 0 {
		s.publishLocked(s.eng.Events(), seq)
	}
	if o.parked != 0 {
		s.parkLocked(c, id, ch.op == protocol.OpAcquireMany, o.parked)
	}
	s.wakeLocked(o.wakes, seq, c)
	s.armLocked(ch.at)
	return o, seq
}

// read runs a query on the engine under s.mu at the current engine time and
// returns its answer with the journal sequence of the last change: a read
// is sent only once what it saw is written, so it never shows state that
// could still be lost. Once a change has panicked nothing is read: memory
// may hold what the log never will.
//
// In cluster mode it first waits until the node has applied every change
// acknowledged before the read arrived, on any node (barrier), or fails
// with UNAVAILABLE when it cannot know.
func read[T any](s *Server, c *conn, query func(now int64) (T, error)) (T, uint64, error) {
	if err := s.barrier(c); err != nil {
		var zero T
		return zero, 0, err
	}
	return readLocal(s, query)
}

// readLocal is read without the cluster's barrier: what this node holds
// now (stats, which must answer while the quorum is lost).
func readLocal[T any](s *Server, query func(now int64) (T, error)) (T, uint64, error) {
	s.turns.lock(&s.mu)
	defer s.mu.Unlock()
	if trace.IsEnabled() {
		defer trace.StartRegion(context.Background(), "mu").End()
	}
	s.unavailableLocked() // a new fault rolls memory back first
	if s.broken.Load() != nil {
		var zero T
		return zero, s.lastSeq, errBroken
	}
	v, err := query(s.engineNowLocked())
	return v, s.lastSeq, err
}

// journalLocked hands recs, the records of the change just made, to the
// journal and returns the sequence its answer must wait for: the last state
// change so far, so even an answer without records never acknowledges
// state that could still be lost. The caller holds s.mu.
func (s *Server) journalLocked(recs []engine.Record) uint64 {
	if s.cfg.Journal == nil {
		return 0
	}
	if len(recs) > 0 {
		s.lastSeq = s.cfg.Journal.Append(recs)
	}
	return s.lastSeq
}

// parkLocked remembers a parked acquire of c: its answer comes as a
// wake-up. The caller holds s.mu.
func (s *Server) parkLocked(c *conn, id uint64, many bool, w engine.WaiterID) {
	s.waiters[w] = waiter{c: c, id: id, many: many}
	if c.waiters == nil {
		c.waiters = make(map[engine.WaiterID]struct{})
	}
	c.waiters[w] = struct{}{}
}

// wakeLocked answers parked acquires the engine has decided: each answer is
// appended to its waiter's connection and a flush is kicked, except on
// self, whose reader flushes at the end of its batch. The caller holds s.mu.
func (s *Server) wakeLocked(wakes []engine.Wakeup, seq uint64, self *conn) {
	for i := range wakes {
		w := &wakes[i]
		wt, ok := s.waiters[w.Waiter]
		if !ok {
			continue
		}
		delete(s.waiters, w.Waiter)
		wt.c.dropWaiterLocked(w.Waiter)
		wt.c.appendResult(wt.id, acquireAnswer(&w.Result, wt.many), seq)
		if wt.c != self {
			wt.c.kick()
		}
	}
}

// ownChangeLocked runs one of the daemon's own changes that nobody waits
// for (a cancelled acquire, a process that ended): at once on a single
// daemon, through the log in cluster mode, where every node applies it.
// applied reports whether it was made here and now, and o is then its
// outcome; a proposed change is applied later, in the log's order. The
// daemon's own changes go through here, never straight to commitLocked,
// which would change this node alone in cluster mode. The caller holds
// s.mu.
func (s *Server) ownChangeLocked(ch *change) (o outcome, applied bool) {
	if s.rep.log != nil {
		s.proposeOwnLocked(ch)
		return outcome{}, false
	}
	o, _ = s.commitLocked(nil, 0, ch)
	return o, true
}
