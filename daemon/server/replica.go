package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/daemon/cluster"
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// This file is the replicated driver of state changes (cluster mode,
// daemon/cluster). The local driver, commitLocked, applies a change to the
// engine and then appends the engine's records to the journal; replaying
// the journal rebuilds the state. The replicated driver appends the change
// itself to a shared log first, and every node applies the log in its
// order with the same applyChange; replaying the log (from a snapshot)
// rebuilds the state. Both are "append a record, replay records"; they
// differ in whether the engine decides before or after the append.
//
// A change proposed here is answered when this node applies it (Apply,
// called by the cluster's follower in log order). Reads first wait, through
// Barrier, until the node has applied what the log held when they arrived.

// Replicator is the shared, ordered log of changes: *cluster.Node.
type Replicator interface {
	Propose(kind cluster.Kind, body []byte, tag any, done func(res any, err error))
	Barrier(ctx context.Context) error
	Owner() string
	Status() cluster.Status
}

// clusterStats is the cluster part of stats, or nil on a single daemon.
func (s *Server) clusterStats() *protocol.ClusterStats {
	if s.rep.log == nil {
		return nil
	}
	st := s.rep.log.Status()
	return &protocol.ClusterStats{
		Node: st.NodeID, Leader: st.Leader, EtcdOK: st.Health.OK, Since: st.Health.Since.UnixMilli(),
		Error: st.Health.Reason, Revision: st.Applied,
	}
}

// replicated holds what the replicated driver adds to a Server. Its
// fields are guarded by Server.mu.
type replicated struct {
	log Replicator
	// clock is the time of the last entry applied: engine time in cluster
	// mode, which the log's order, not this machine's clock, moves.
	clock int64
	// owners maps each queued request to the owner (node incarnation) that
	// proposed it: part of the replicated state, so the leader can drop
	// the requests of a node that is gone.
	owners map[engine.WaiterID]string
	// procs maps each process that leases are bound to (bind "process")
	// to the owner whose client bound it: only that node can watch it, and
	// when it is gone its leases without a ttl are released. Entries of
	// processes nothing is bound to any more are dropped lazily.
	procs map[engine.Process]string
}

// SetReplicator switches the server to cluster mode: from then on state
// changes go to log and are applied by Apply, reads wait for log's
// Barrier, and the expiry timer is the leader's (KindTick). Call it before
// Serve, after the node has loaded the state (Restore).
func (s *Server) SetReplicator(log Replicator) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rep.log = log
	s.rep.init()
	s.timer.Stop()
	s.armed = 0
	// The processes this node's clients bound before it restarted.
	s.syncWatchesLocked("joined the cluster")
}

func (r *replicated) init() {
	if r.owners == nil {
		r.owners = make(map[engine.WaiterID]string)
	}
	if r.procs == nil {
		r.procs = make(map[engine.Process]string)
	}
}

// ownProcessLocked reports whether this node watches p: always on a single
// daemon; in cluster mode when this node's clients bound it. The caller
// holds s.mu.
func (s *Server) ownProcessLocked(p engine.Process) bool {
	if s.rep.log == nil {
		return true
	}
	o, ok := s.rep.procs[p]
	return ok && cluster.OwnerNode(o) == cluster.OwnerNode(s.rep.log.Owner())
}

// StateMachine returns the server as the cluster's state machine.
func (s *Server) StateMachine() cluster.StateMachine { return (*stateMachine)(s) }

// stateMachine is a Server seen by daemon/cluster.
type stateMachine Server

// origin is the tag of a change this node proposed for a client: where to
// park its acquire if it must wait.
type origin struct {
	c    *conn
	id   uint64
	many bool
}

// wireChange is a change as stored in the log.
type wireChange struct {
	Req    []byte          `msgpack:"r,omitempty"` // op and args, as a request body on the wire
	Op     string          `msgpack:"o,omitempty"` // the daemon's own changes (opCancel, opProcessEnd)
	UID    uint32          `msgpack:"u,omitempty"`
	PID    int32           `msgpack:"p,omitempty"`
	Waiter engine.WaiterID `msgpack:"w,omitempty"`
	Bind   *engine.Process `msgpack:"b,omitempty"`  // the process an acquire binds its leases to
	Proc   *engine.Process `msgpack:"pe,omitempty"` // opProcessEnd: the process that ended
}

func encodeChange(ch *change) ([]byte, error) {
	w := wireChange{UID: ch.caller.UID, PID: ch.caller.PID, Waiter: ch.waiter, Bind: ch.bind}
	if ch.op == opProcessEnd {
		w.Proc = &ch.proc
	}
	if ch.args != nil {
		req, err := protocol.AppendRequest(nil, 1, ch.op, ch.args)
		if err != nil {
			return nil, err
		}
		w.Req = req[protocol.HeaderSize:]
	} else {
		w.Op = ch.op
	}
	return msgpack.Marshal(&w)
}

func decodeChange(b []byte) (*change, error) {
	var w wireChange
	if err := msgpack.Unmarshal(b, &w); err != nil {
		return nil, err
	}
	ch := &change{op: w.Op, caller: engine.Caller{UID: w.UID, PID: w.PID}, waiter: w.Waiter, bind: w.Bind}
	if w.Proc != nil {
		ch.proc = *w.Proc
	}
	if w.Req != nil {
		var req protocol.Request
		if err := protocol.DecodeRequest(w.Req, &req); err != nil {
			return nil, err
		}
		ch.op, ch.args = req.Op, &req.Args
	}
	return ch, nil
}

// propose is commit in cluster mode: the change goes to the log, and its
// answer is sent when this node applies it.
func (s *Server) propose(c *conn, id uint64, ch *change) {
	err := func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.admitLocked(c, ch)
	}()
	if err != nil {
		c.answerErr(id, err, 0)
		return
	}
	s.proposeStep(c, id, ch, nil)
}

// proposeStep proposes ch and answers it once applied. A long change
// (outcome.more, see stepWork) is proposed again, a step per log entry,
// until its last step; prev is the outcome of the steps so far.
func (s *Server) proposeStep(c *conn, id uint64, ch *change, prev *outcome) {
	body, err := encodeChange(ch)
	if err != nil {
		c.answerErr(id, err, 0)
		return
	}
	c.proposing(1)
	s.rep.log.Propose(cluster.KindChange, body, &origin{c: c, id: id, many: ch.op == protocol.OpAcquireMany}, func(res any, err error) {
		defer c.proposing(-1)
		if err != nil {
			c.answerErr(id, clusterError(err), 0)
			c.kick()
			return
		}
		o := res.(outcome)
		if prev != nil {
			o = sumSteps(*prev, o)
		}
		if o.more && o.err == nil {
			s.proposeStep(c, id, ch, &o)
			return
		}
		switch {
		case o.err != nil:
			c.answerErr(id, o.err, 0)
		case o.parked != 0:
			return // answered by a wake-up
		default:
			c.appendResult(id, o.result, 0)
		}
		c.kick()
	})
}

// proposeOwnLocked proposes one of the daemon's own changes (a closed
// connection's acquire cancelled, a bound process ended), which nobody
// waits for. A long one (outcome.more) is proposed again once applied, a
// step per log entry, as proposeStep does. The caller holds s.mu; the
// callback does not need it, as Propose does not.
func (s *Server) proposeOwnLocked(ch *change) {
	body, err := encodeChange(ch)
	if err != nil {
		s.log.Error("encoding a change failed", "op", ch.op, "err", err)
		return
	}
	s.rep.log.Propose(cluster.KindChange, body, nil, func(res any, err error) {
		if o, ok := res.(outcome); ok && err == nil && o.more && o.err == nil {
			s.proposeOwnLocked(ch)
		}
	})
}

// clusterError turns an error of the log into the error a client sees.
func clusterError(err error) error {
	switch {
	case errors.Is(err, cluster.ErrUnavailable):
		return &protocol.Error{Code: protocol.CodeUnavailable,
			Message: "klock: this klockd cannot reach an etcd quorum; nothing was changed; retry"}
	case errors.Is(err, cluster.ErrUncertain):
		return &protocol.Error{Code: protocol.CodeUnavailable,
			Message: "klock: the etcd quorum was lost while this change was in flight; it may still take effect when it returns; resending is safe (acquire with the same idem key)"}
	case errors.Is(err, cluster.ErrClosed):
		return errShuttingDown
	}
	return err
}

// barrier makes a read linearizable in cluster mode: it waits for the
// changes this connection proposed before it to be answered, then for the
// node to apply everything the log held. It returns nil at once on a
// single daemon.
func (s *Server) barrier(c *conn) error {
	if s.rep.log == nil {
		return nil
	}
	c.waitProposals()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultWriteTimeout)
	defer cancel()
	switch err := s.rep.log.Barrier(ctx); {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrClosed):
		return errShuttingDown
	case errors.Is(err, cluster.ErrUnavailable):
		return &protocol.Error{Code: protocol.CodeUnavailable,
			Message: "klock: this klockd cannot reach an etcd quorum, so it cannot tell whether its copy of the lock table is current; reads are refused until the quorum returns"}
	default:
		return &protocol.Error{Code: protocol.CodeUnavailable,
			Message: "klock: this klockd could not catch up with the cluster's log in time (" + err.Error() + "); retry"}
	}
}

// engineNowLocked is the engine time of a read: the local clock, but never
// before the last change applied. The caller holds s.mu.
func (s *Server) engineNowLocked() int64 {
	return max(s.nowMS(), s.rep.clock)
}

// Apply applies one entry of the log: every node calls it with the same
// entries in the same order (cluster.StateMachine).
//
// A panic while applying it (a bug) is recovered and the entry answered
// INTERNAL: unlike a single daemon, which replays records and so never
// decides again, a node that restarted would decide the same entry again
// and panic again, and so would every node, forever. Recovered, every node
// holds the same state after it, since each did the same steps.
func (m *stateMachine) Apply(e *cluster.Entry, tag any) (res any) {
	s := (*Server)(m)
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic while applying a change of the cluster's log; every node applies it alike",
				"revision", e.Rev, "index", e.Index, "owner", e.Owner, "panic", r, "stack", string(debug.Stack()))
			res = outcome{err: &protocol.Error{Code: protocol.CodeInternal,
				Message: "klock: internal error while applying this change; every node of the cluster applied it alike and logged it; it may have been made in part"}}
		}
	}()
	s.rep.init()
	s.eng.ReseedLeaseIDs(e.Seed)
	s.rep.clock = e.Time
	var o outcome
	switch e.Kind {
	case cluster.KindChange:
		ch, err := decodeChange(e.Body)
		if err != nil {
			// Every node skips it alike.
			s.log.Error("skipping a change in the log that does not decode", "revision", e.Rev, "index", e.Index, "err", err)
			return outcome{err: fmt.Errorf("klock: internal error: a change did not decode: %w", err)}
		}
		ch.at = e.Time
		o = applyChange(s.eng, ch)
		if midChangeHook != nil {
			midChangeHook(ch.op)
		}
		switch {
		case ch.op == opCancel:
			delete(s.rep.owners, ch.waiter)
		case ch.op == opProcessEnd && !o.more:
			delete(s.rep.procs, ch.proc)
		case ch.bind != nil && s.eng.ProcessBound(*ch.bind):
			s.rep.procs[*ch.bind] = e.Owner
		}
		if o.parked != 0 {
			s.rep.owners[o.parked] = e.Owner
			if org, ok := tag.(*origin); ok && org != nil {
				s.parkLocked(org.c, org.id, org.many, o.parked)
			}
		}
	case cluster.KindTick:
		o = applyChange(s.eng, &change{op: opExpire, at: e.Time})
		// Forget processes nothing is bound to any more (their leases were
		// released): only bound ones count anywhere.
		for p := range s.rep.procs {
			if !s.eng.ProcessBound(p) {
				delete(s.rep.procs, p)
			}
		}
	case cluster.KindDropOwner:
		o.wakes = s.dropOwnerLocked(e.Time, string(e.Body))
	}
	// What an acquire made due now (a queued junior that must DIE), or
	// what expired since, is decided at once, as a single daemon's timer
	// would: every node does it at the same point of the log.
	if at, ok := s.eng.NextDeadline(); ok && at <= e.Time {
		x := applyChange(s.eng, &change{op: opExpire, at: e.Time})
		o.wakes = append(o.wakes, x.wakes...)
	}
	for _, w := range o.wakes {
		delete(s.rep.owners, w.Waiter)
	}
	// Watchers see the applied change, the same on every node; the
	// cluster's log is durable already (sequence 0: nothing to wait for).
	if len(s.subs) > 0 {
		s.publishLocked(s.eng.Events(), 0)
	}
	s.wakeLocked(o.wakes, 0, nil)
	return o
}

// dropOwnerLocked cancels every request queued by owner (a node whose etcd
// session lapsed), in id order. The node itself, if it is still alive,
// answers its clients that the request was dropped. The caller holds s.mu.
func (s *Server) dropOwnerLocked(now int64, owner string) []engine.Wakeup {
	var ids []engine.WaiterID
	for id, o := range s.rep.owners {
		if o == owner {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var wakes []engine.Wakeup
	for _, id := range ids {
		delete(s.rep.owners, id)
		wakes = append(wakes, s.eng.Cancel(now, id)...)
		s.answerLostLocked(id, "klock: this klockd lost its etcd session, and the cluster dropped the request; retry")
	}
	// Leases bound to its processes without a ttl: nothing else would end
	// them. Those with a ttl run out as any lease.
	var procs []engine.Process
	for p, o := range s.rep.procs {
		if o == owner {
			procs = append(procs, p)
		}
	}
	slices.SortFunc(procs, func(a, b engine.Process) int {
		return cmp.Or(cmp.Compare(a.PID, b.PID), cmp.Compare(a.Start, b.Start), cmp.Compare(a.Boot, b.Boot))
	})
	for _, p := range procs {
		delete(s.rep.procs, p)
		for _, l := range s.eng.BoundLeases(p) {
			_, w, _ := s.eng.Release(now, engine.Caller{UID: 0}, l.ID)
			wakes = append(wakes, w...)
		}
	}
	return wakes
}

// answerLostLocked answers a local parked acquire that the replicated
// state no longer has, with UNAVAILABLE and why. The caller holds s.mu.
func (s *Server) answerLostLocked(id engine.WaiterID, why string) {
	w, ok := s.waiters[id]
	if !ok {
		return
	}
	delete(s.waiters, id)
	w.c.dropWaiterLocked(id)
	w.c.appendError(w.id, protocol.CodeUnavailable, why, 0)
	w.c.kick()
}

// replicaState is the snapshot of a node: the engine with its queue, and
// who owns each queued request.
type replicaState struct {
	Version int                  `msgpack:"v"`
	Engine  *engine.ReplicaState `msgpack:"e"`
	Owners  []waiterOwner        `msgpack:"o"`
	Procs   []procOwner          `msgpack:"p,omitempty"`
}

type procOwner struct {
	Proc  engine.Process `msgpack:"p"`
	Owner string         `msgpack:"o"`
}

type waiterOwner struct {
	Waiter engine.WaiterID `msgpack:"w"`
	Owner  string          `msgpack:"o"`
}

const replicaStateVersion = 1

// Snapshot returns the node's whole state (cluster.StateMachine).
func (m *stateMachine) Snapshot() ([]byte, error) {
	s := (*Server)(m)
	s.mu.Lock()
	st := replicaState{Version: replicaStateVersion, Engine: s.eng.ReplicaSnapshot()}
	for w, o := range s.rep.owners {
		st.Owners = append(st.Owners, waiterOwner{w, o})
	}
	for p, o := range s.rep.procs {
		if s.eng.ProcessBound(p) {
			st.Procs = append(st.Procs, procOwner{p, o})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(st.Owners, func(x, y waiterOwner) int { return cmp.Compare(x.Waiter, y.Waiter) })
	slices.SortFunc(st.Procs, func(x, y procOwner) int {
		return cmp.Or(cmp.Compare(x.Proc.PID, y.Proc.PID), cmp.Compare(x.Proc.Start, y.Proc.Start), cmp.Compare(x.Proc.Boot, y.Proc.Boot))
	})
	return msgpack.Marshal(&st)
}

// Restore replaces the node's state with a snapshot's (cluster.StateMachine).
// A request parked here that the snapshot does not hold as this node's is
// answered UNAVAILABLE: it was decided in the part of the log this node
// skipped.
func (m *stateMachine) Restore(b []byte) error {
	s := (*Server)(m)
	var st replicaState
	if err := msgpack.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("klock: snapshot does not decode: %w", err)
	}
	if st.Version != replicaStateVersion || st.Engine == nil {
		return fmt.Errorf("klock: snapshot version %d is not %d", st.Version, replicaStateVersion)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.eng.RestoreReplica(st.Engine); err != nil {
		return err
	}
	s.rep.owners = make(map[engine.WaiterID]string, len(st.Owners))
	for _, wo := range st.Owners {
		s.rep.owners[wo.Waiter] = wo.Owner
	}
	s.rep.procs = make(map[engine.Process]string, len(st.Procs))
	for _, po := range st.Procs {
		s.rep.procs[po.Proc] = po.Owner
	}
	mine := ""
	if s.rep.log != nil {
		mine = cluster.OwnerNode(s.rep.log.Owner())
	}
	for _, id := range slices.Sorted(maps.Keys(s.waiters)) {
		if o, ok := s.rep.owners[id]; !ok || cluster.OwnerNode(o) != mine {
			s.answerLostLocked(id, "klock: this klockd fell behind the cluster and lost track of this request, which may have been granted; resend it with the same idem key")
		}
	}
	return nil
}

// NextDeadline returns when the engine next has timed work
// (cluster.StateMachine).
func (m *stateMachine) NextDeadline() (int64, bool) {
	s := (*Server)(m)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.NextDeadline()
}

// Owners returns the owners of queued requests (cluster.StateMachine).
func (m *stateMachine) Owners() []string {
	s := (*Server)(m)
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool)
	var out []string
	add := func(o string) {
		if !seen[o] {
			seen[o] = true
			out = append(out, o)
		}
	}
	for _, o := range s.rep.owners {
		add(o)
	}
	for p, o := range s.rep.procs {
		if len(s.eng.BoundLeases(p)) > 0 {
			add(o)
		}
	}
	return out
}

// proposing counts a change proposed (+1) or answered (-1) on c.
func (c *conn) proposing(delta int) {
	c.propMu.Lock()
	defer c.propMu.Unlock()
	c.proposals += delta
	if c.proposals == 0 && c.propIdle != nil {
		close(c.propIdle)
		c.propIdle = nil
	}
}

// waitProposals waits until every change c proposed has been answered, so
// a read that follows changes on one connection sees them.
func (c *conn) waitProposals() {
	c.propMu.Lock()
	if c.proposals == 0 {
		c.propMu.Unlock()
		return
	}
	if c.propIdle == nil {
		c.propIdle = make(chan struct{})
	}
	ch := c.propIdle
	c.propMu.Unlock()
	<-ch
}
