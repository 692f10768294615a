package cluster

import (
	"context"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// How often the leader looks for lapsed owners, and the longest it waits
// before writing a snapshot when commands were applied.
const (
	ownersEvery  = time.Second
	snapshotIdle = time.Minute
)

// campaign runs for leadership while the node is open and does the
// leader's work while it holds it.
func (n *Node) campaign() {
	for n.ctx.Err() == nil {
		s, replaced := n.currentSession()
		e := concurrency.NewElection(s, n.keys.leader())
		ctx, cancel := context.WithCancel(n.ctx)
		go func() {
			select {
			case <-s.Done():
			case <-replaced:
			case <-ctx.Done():
			}
			cancel()
		}()
		if err := e.Campaign(ctx, n.Owner()); err != nil {
			cancel()
			if n.ctx.Err() == nil {
				n.log.Debug("campaign for leader failed", "err", err)
				n.sleep(time.Second)
			}
			continue
		}
		n.leading.Store(true)
		n.log.Info("elected leader")
		n.lead(ctx, e)
		n.leading.Store(false)
		n.log.Info("no longer the leader")
		rctx, rcancel := context.WithTimeout(context.Background(), n.cfg.Timeout)
		e.Resign(rctx)
		rcancel()
		cancel()
	}
}

// lead does the leader's work until ctx ends: ticks when a deadline is due,
// drops lapsed owners, writes snapshots.
func (n *Node) lead(ctx context.Context, e *concurrency.Election) {
	var head *snapshotHead
	if h, _, err := n.readSnapshotHead(ctx); err == nil {
		head = h
	}
	ownersTick := time.NewTicker(ownersEvery)
	defer ownersTick.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	tickBusy := make(chan struct{}, 1) // holds a value while a tick is in flight
	lastSnap := time.Now()
	for {
		n.progMu.Lock()
		moved := n.progress
		n.progMu.Unlock()

		// A tick when the earliest deadline is due; else wake up for it.
		if at, ok := n.sm.NextDeadline(); ok {
			if wait := time.Duration(at-n.nowMS()) * time.Millisecond; wait <= 0 {
				n.proposeTick(tickBusy)
			} else {
				timer.Reset(wait)
			}
		}
		n.applyMu.Lock()
		since := n.sinceSnap
		n.applyMu.Unlock()
		if since >= n.cfg.SnapshotEvery || since > 0 && time.Since(lastSnap) > snapshotIdle {
			if h, err := n.writeSnapshot(ctx, e, head); err == nil {
				head, lastSnap = h, time.Now()
			} else if ctx.Err() == nil {
				n.log.Warn("writing a snapshot failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-moved:
		case <-timer.C:
		case <-ownersTick.C:
			n.dropLapsedOwners(ctx)
		}
	}
}

// proposeTick proposes a KindTick unless one is in flight.
func (n *Node) proposeTick(busy chan struct{}) {
	select {
	case busy <- struct{}{}:
	default:
		return
	}
	n.Propose(KindTick, nil, nil, func(any, error) { <-busy })
}

// dropLapsedOwners proposes KindDropOwner for every owner the state machine
// knows whose node no longer announces it (its etcd session lapsed or the
// node restarted under a new session).
func (n *Node) dropLapsedOwners(ctx context.Context) {
	owners := n.sm.Owners()
	if len(owners) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	resp, err := n.cli.Get(rctx, n.keys.nodes(), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return
	}
	live := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		live[string(kv.Value)] = true
	}
	slices.Sort(owners)
	for _, o := range owners {
		if !live[o] {
			n.log.Info("dropping what a lapsed node owned", "owner", o)
			n.Propose(KindDropOwner, []byte(o), nil, func(any, error) {})
		}
	}
}
