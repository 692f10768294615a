package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// catchUpPage is how many batches one range read of the log returns.
const catchUpPage = 256

// catchUp brings the state machine up to the revision etcd is at now: it
// loads the snapshot when the node is behind it (or new), then applies the
// log after it. It returns that revision; the watch continues after it.
func (n *Node) catchUp(ctx context.Context) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	head, rev, err := n.readSnapshotHead(rctx)
	if err != nil {
		return 0, err
	}
	if head != nil && head.Rev > n.applied.Load() {
		if err := n.loadSnapshot(ctx, head, rev); err != nil {
			return 0, err
		}
	}
	for from := n.applied.Load() + 1; ; {
		pctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
		resp, err := n.cli.Get(pctx, n.keys.log(), clientv3.WithPrefix(), clientv3.WithRev(rev),
			clientv3.WithMinModRev(from), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend),
			clientv3.WithLimit(catchUpPage))
		cancel()
		if err != nil {
			return 0, err
		}
		for _, kv := range resp.Kvs {
			n.applyBatch(kv)
			from = kv.ModRevision + 1
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
	}
	return rev, nil
}

// follow applies the log as etcd orders it, from after rev, until the node
// closes: a watch on the log's prefix, re-established (after catching up
// again) whenever it breaks.
func (n *Node) follow(rev int64) {
	for {
		err := n.watch(rev)
		if n.ctx.Err() != nil {
			return
		}
		n.markFailed(err)
		n.log.Debug("following the log stopped; catching up again", "err", err)
		for n.sleep(200 * time.Millisecond) {
			r, err := n.catchUp(n.ctx)
			if err == nil {
				rev = r
				break
			}
			n.markFailed(err)
		}
		if n.ctx.Err() != nil {
			return
		}
	}
}

var errWatchClosed = errors.New("klock: the etcd watch closed")

// watch applies batches from a watch starting after rev until it fails.
// The watch requires an etcd leader, so a member cut off from its quorum
// ends it instead of going quiet.
func (n *Node) watch(rev int64) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(n.ctx))
	defer cancel()
	wch := n.cli.Watch(ctx, n.keys.log(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT {
				n.applyBatch(ev.Kv)
			}
		}
	}
	return errWatchClosed
}

// applyBatch applies one batch of the log, if it is newer than what the
// node has applied, and answers the proposals it carries for this node.
func (n *Node) applyBatch(kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	props := n.prop.claim(key)
	b, err := decodeBatch(kv.Value)
	var results []any
	n.applyMu.Lock()
	if kv.ModRevision <= n.applied.Load() {
		n.applyMu.Unlock()
		if props != nil {
			fail(props, ErrUncertain) // cannot happen: a batch is written once
		}
		return
	}
	if err != nil {
		// Every node skips it alike.
		n.log.Error("skipping a log entry that is not a batch", "key", key, "revision", kv.ModRevision, "err", err)
	} else {
		results = make([]any, len(b.Commands))
		for i := range b.Commands {
			c := &b.Commands[i]
			n.clock = max(n.clock, c.Time)
			e := Entry{
				Rev: kv.ModRevision, Index: i, Owner: b.Owner, Time: n.clock,
				Kind: c.Kind, Body: c.Body, Seed: entrySeed(n.secret, kv.ModRevision, i),
			}
			var tag any
			if i < len(props) {
				tag = props[i].tag
			}
			results[i] = n.sm.Apply(&e, tag)
		}
		n.sinceSnap += len(b.Commands)
	}
	n.applied.Store(kv.ModRevision)
	n.applyMu.Unlock()
	n.advanced()
	for i, pr := range props {
		if i < len(results) {
			pr.done(results[i], nil)
		} else {
			pr.done(nil, fmt.Errorf("klock: internal error: this node's own log batch at revision %d did not decode: %v", kv.ModRevision, err))
		}
	}
}

// advanced wakes whoever waits for the applied revision to move.
func (n *Node) advanced() {
	n.progMu.Lock()
	close(n.progress)
	n.progress = make(chan struct{})
	n.progMu.Unlock()
}

// waitApplied waits until the node has applied revision rev, the node
// loses its quorum (ErrUnavailable) or ctx ends.
func (n *Node) waitApplied(ctx context.Context, rev int64) error {
	for {
		n.progMu.Lock()
		ch := n.progress
		n.progMu.Unlock()
		if n.applied.Load() >= rev {
			return nil
		}
		ok, _, _, lost := n.health.state()
		if !ok {
			return ErrUnavailable
		}
		select {
		case <-ch:
		case <-lost:
			return ErrUnavailable
		case <-ctx.Done():
			return ctx.Err()
		case <-n.ctx.Done():
			return ErrClosed
		}
	}
}
