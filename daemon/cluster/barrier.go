package cluster

import (
	"context"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// barrier shares one etcd round trip among the reads that arrive together.
// A read must see every change acknowledged before it arrived, so it never
// joins a round trip that started before it: it waits for the next one.
type barrier struct {
	n *Node

	// mu guards the fields that follow.
	mu      sync.Mutex
	running *round // in flight
	next    *round // starts when running ends
}

// round is one fetch of the log's last revision.
type round struct {
	done chan struct{}
	rev  int64
	err  error
}

// Barrier waits until this node has applied every change etcd had
// committed when Barrier was called, so a read served after it is
// linearizable. It fails with ErrUnavailable when no etcd quorum can
// be reached, or with ctx's error.
func (n *Node) Barrier(ctx context.Context) error {
	if ok, _, _, _ := n.health.state(); !ok {
		return ErrUnavailable
	}
	r := n.reads.join()
	select {
	case <-r.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.err != nil {
		return r.err
	}
	return n.waitApplied(ctx, r.rev)
}

func (b *barrier) join() *round {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running == nil {
		b.running = &round{done: make(chan struct{})}
		go b.fetch(b.running)
		return b.running
	}
	if b.next == nil {
		b.next = &round{done: make(chan struct{})}
	}
	return b.next
}

// fetch reads the revision of the log's last batch (the tail key moves with
// every batch), then starts the next round if reads joined it.
func (b *barrier) fetch(r *round) {
	n := b.n
	for r != nil {
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(n.ctx), n.cfg.Timeout)
		resp, err := n.cli.Get(ctx, n.keys.tail())
		cancel()
		switch {
		case err != nil:
			n.markFailed(err)
			r.err = ErrUnavailable
		case len(resp.Kvs) > 0:
			r.rev = resp.Kvs[0].ModRevision
		}
		close(r.done)
		b.mu.Lock()
		r, b.running, b.next = b.next, b.next, nil
		b.mu.Unlock()
	}
}
