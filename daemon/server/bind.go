package server

import (
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// This file is the server's side of bind "process": identifying the
// process behind a bound acquire, watching it, ending its leases when it
// ends, and checking at start the processes recovered leases are bound to.
// The pidfds and /proc are in procs.go and procwatch.go; the engine only
// ever sees an engine.Process.

// Values of the bind argument.
const (
	bindNone    = "none"
	bindProcess = "process"
)

// acquire serves acquire and acquire_many. A bound acquire names the
// connection's process in its change; identifying it reads /proc and makes
// a syscall or two, so it is done outside the engine lock, once per
// connection. When the process cannot be bound, the answer is
// BIND_UNAVAILABLE, unless the request's arguments are wrong: as for any
// acquire, INVALID_ARGUMENT wins.
func (s *Server) acquire(c *conn, id uint64, ch *change) {
	switch ch.args.Bind {
	case "", bindNone:
	case bindProcess:
		p, err := c.process()
		if err != nil {
			s.refuseBind(c, id, ch, err)
			return
		}
		ch.bind = p
	default:
		c.appendError(id, protocol.CodeInvalidArgument, "klock: argument bind is "+quote(ch.args.Bind)+
			`; allowed "none" (the default) or "process"`, 0)
		return
	}
	s.commit(c, id, ch)
}

// process returns the process that connected c, identifying it on first
// use and keeping a pidfd for it until watchLocked adopts or closes it.
// Only c's reader goroutine calls it.
func (c *conn) process() (*engine.Process, error) {
	if c.proc == nil {
		p, fd, err := peerProcess(c.nc, c.caller.PID)
		if err != nil {
			return nil, err
		}
		c.proc, c.pidfd = &p, fd
	}
	return c.proc, nil
}

// refuseBind answers a bound acquire whose process cannot be bound: with
// the engine's INVALID_ARGUMENT if its arguments are wrong, else with err.
func (s *Server) refuseBind(c *conn, id uint64, ch *change, err error) {
	ch.bind = &engine.Process{} // checked as bound: it may omit its ttl
	var one [1]engine.Intent
	req, many := acquireRequest(ch, one[:0])
	_, seq, invalid := readLocal(s, func(int64) (struct{}, error) {
		return struct{}{}, s.eng.CheckAcquire(req, many)
	})
	if invalid != nil {
		err = invalid
	}
	c.answerErr(id, err, seq)
}

// watchLocked makes sure p, the process that connected c, is watched
// before the engine may bind a lease to it. The caller holds s.mu.
func (s *Server) watchLocked(c *conn, p engine.Process) error {
	fd := c.pidfd
	c.pidfd = -1
	return s.procs.holdLocked(s, p, fd, func() (int, error) {
		// The process's watch was closed after c identified it (nothing
		// was bound to it any more): open a pidfd for it again.
		fd, err := peerPidfd(c.nc, p.PID)
		if err != nil {
			return -1, gone(p.PID, err)
		}
		q, err := identifyBound(p.PID, fd)
		if err == nil && q != p {
			err = gone(p.PID, nil)
		}
		if err != nil {
			closeFD(fd)
			return -1, err
		}
		return fd, nil
	})
}

// processesEnded ends the leases of the processes whose watches, named by
// keys, saw them end (endProcess).
func (s *Server) processesEnded(keys []uint64) {
	s.turns.lock(&s.mu)
	ended := s.procs.endedLocked(keys)
	s.mu.Unlock()
	for _, p := range ended {
		s.endProcess(p)
	}
}

// endProcess ends the leases bound to p, which ended, as a state change
// that ends them as a release would (a record, and the requests queued on
// their resources decided again). A process with more than stepWork leases
// or queued requests is ended in steps, with s.mu released in between and
// the requests waiting for it let in first (turns), as end_session is, so
// that no request waits behind all of them. In cluster mode the first step
// is proposed here and the next ones by proposeOwnLocked.
func (s *Server) endProcess(p engine.Process) {
	released := 0
	for {
		o, applied := s.endProcessStep(p)
		released += o.ended
		if !applied || !o.more || o.err != nil {
			break
		}
		s.turns.yield()
	}
	if released > 0 {
		s.log.Debug("bound process ended; its leases were released", "pid", p.PID, "leases", released)
	}
}

// endProcessStep is one step of endProcess, under s.mu.
func (s *Server) endProcessStep(p engine.Process) (o outcome, applied bool) {
	s.turns.lock(&s.mu)
	defer s.mu.Unlock()
	defer s.recoverBug("ending the leases of an ended process")
	return s.ownChangeLocked(&change{op: opProcessEnd, proc: p})
}

// endProcessLocked is endProcess with s.mu held throughout: every step at
// once. syncWatchesLocked uses it, before serving or while healing.
func (s *Server) endProcessLocked(p engine.Process) (o outcome, applied bool) {
	ch := &change{op: opProcessEnd, proc: p}
	o, applied = s.ownChangeLocked(ch)
	for applied && o.more && o.err == nil {
		next, _ := s.ownChangeLocked(ch)
		next.ended += o.ended
		o = next
	}
	return o, applied
}

// syncWatchesLocked makes the watches match the processes the engine's
// leases are bound to: each one not watched is checked, and watched if it
// still runs; one that ended is ended now, as a state change (a record).
// It runs at start, before serving, for the leases recovered from the log
// (their processes may have ended while klockd was down); after the engine
// is rolled back to the log (degraded.go); and when a degraded server
// heals, since a process that ends while changes are refused cannot be
// ended until then. The caller holds s.mu.
func (s *Server) syncWatchesLocked(why string) {
	var procs []engine.Process
	for _, p := range s.eng.BoundProcesses() {
		// In cluster mode the engine holds every node's processes; this
		// node watches only those its clients bound (replica.go).
		if !s.procs.watching(p) && s.ownProcessLocked(p) {
			procs = append(procs, p)
		}
	}
	if len(procs) == 0 {
		return
	}
	ended, released, unwatched := 0, 0, 0
	for _, p := range procs {
		fd, alive, err := openProcess(p)
		if err == nil && alive {
			// Whatever the limit, as recovered agents and leases are kept.
			err = s.procs.addLocked(s, p, fd)
		}
		switch {
		case err != nil:
			unwatched++
			s.log.Warn("cannot watch a process that leases are bound to; they stay until released or their ttl passes",
				"pid", p.PID, "err", err)
		case !alive:
			// In cluster mode it is proposed and applied by every node.
			o, applied := s.endProcessLocked(p)
			if applied && o.err != nil {
				unwatched++ // refused while degraded: checked again when it heals
				continue
			}
			ended++
			released += o.ended
		}
	}
	s.log.Info("processes that leases are bound to checked", "why", why, "checked", len(procs),
		"ended", ended, "leases_released", released, "unwatched", unwatched)
}

// wireExpiry is a lease's expires_at on the wire: 0 for a lease without a
// ttl.
func wireExpiry(ms int64) int64 {
	if ms == engine.Never {
		return 0
	}
	return ms
}
