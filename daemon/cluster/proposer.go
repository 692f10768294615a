package cluster

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Batching bounds: one etcd write carries at most this many commands or
// bytes of them (etcd refuses requests over --max-request-bytes, 1.5 MiB
// by default).
const (
	maxBatchCommands = 1024
	maxBatchBytes    = 512 << 10
)

// proposal is one command waiting to be written, then applied.
type proposal struct {
	cmd  Command
	tag  any
	done func(res any, err error)
}

// proposer writes commands to the log: whatever has queued while the last
// write was in flight goes out as one batch, one write at a time, so that
// a client's commands are applied in the order it sent them.
type proposer struct {
	n *Node

	// mu guards the fields that follow.
	mu      sync.Mutex
	queue   []*proposal
	wake    chan struct{} // has a value when queue is not empty
	seq     uint64        // batches written by this node
	pending map[string][]*proposal
	closed  bool
}

func (p *proposer) init(n *Node) {
	p.n = n
	p.wake = make(chan struct{}, 1)
	p.pending = make(map[string][]*proposal)
}

// Propose sends a command of kind with body to be applied by every node;
// tag is handed to this node's StateMachine.Apply with it. done is called
// exactly once: with the state machine's result when this
// node applies the command; with ErrUnavailable, at once, when the node
// knows it cannot reach an etcd quorum (nothing was sent); or with
// ErrUncertain when the quorum was lost while it was in flight. done runs
// on the node's goroutines and must not block.
func (n *Node) Propose(kind Kind, body []byte, tag any, done func(res any, err error)) {
	if ok, _, _, _ := n.health.state(); !ok {
		done(nil, ErrUnavailable)
		return
	}
	p := &n.prop
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		done(nil, ErrClosed)
		return
	}
	p.queue = append(p.queue, &proposal{cmd: Command{Kind: kind, Time: n.nowMS(), Body: body}, tag: tag, done: done})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run is the proposer's loop.
func (p *proposer) run() {
	n := p.n
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-p.wake:
		}
		for {
			props := p.take()
			if len(props) == 0 {
				break
			}
			p.write(props)
		}
	}
}

// take removes the next batch from the queue.
func (p *proposer) take() []*proposal {
	p.mu.Lock()
	defer p.mu.Unlock()
	size, k := 0, 0
	for k < len(p.queue) && k < maxBatchCommands {
		size += len(p.queue[k].cmd.Body) + 16
		if k > 0 && size > maxBatchBytes {
			break
		}
		k++
	}
	out := append([]*proposal(nil), p.queue[:k]...)
	clear(p.queue[:k])
	p.queue = p.queue[k:]
	if len(p.queue) == 0 {
		p.queue = nil
	}
	return out
}

// write writes one batch and registers it as pending until the follower
// applies it (or it is given up).
func (p *proposer) write(props []*proposal) {
	n := p.n
	if ok, _, _, _ := n.health.state(); !ok {
		fail(props, ErrUnavailable)
		return
	}
	cmds := make([]Command, len(props))
	for i, pr := range props {
		cmds[i] = pr.cmd
	}
	owner := n.Owner()
	val, err := encodeBatch(owner, cmds)
	if err != nil {
		n.log.Error("encoding a batch failed", "err", err)
		fail(props, ErrUnavailable)
		return
	}
	p.mu.Lock()
	p.seq++
	key := n.keys.batch(owner, p.seq)
	// Registered before the write: the follower may see the batch before
	// the write returns.
	p.pending[key] = props
	p.mu.Unlock()

	// A member without a leader refuses at once instead of holding the
	// request until the timeout.
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(n.ctx), n.cfg.Timeout)
	_, err = n.cli.Txn(ctx).Then(clientv3.OpPut(key, string(val)), clientv3.OpPut(n.keys.tail(), "")).Commit()
	cancel()
	if err != nil {
		n.markFailed(err)
		p.giveUp(key, ErrUncertain)
		return
	}
	// Written: the follower answers it, unless it cannot see the log.
	time.AfterFunc(n.cfg.Timeout, func() { p.giveUp(key, ErrUncertain) })
}

// claim returns and forgets the proposals of a batch this node wrote, or
// nil.
func (p *proposer) claim(key string) []*proposal {
	p.mu.Lock()
	defer p.mu.Unlock()
	props := p.pending[key]
	if props != nil {
		delete(p.pending, key)
	}
	return props
}

// giveUp answers a pending batch's proposals with err unless the follower
// has answered them already.
func (p *proposer) giveUp(key string, err error) {
	if props := p.claim(key); props != nil {
		fail(props, err)
	}
}

// giveUpAll answers every pending batch with err (the follower lost its
// place in the log).
func (p *proposer) giveUpAll(err error) {
	p.mu.Lock()
	all := p.pending
	p.pending = make(map[string][]*proposal)
	p.mu.Unlock()
	for _, props := range all {
		fail(props, err)
	}
}

// close answers what is queued or pending with ErrClosed or ErrUncertain
// and refuses new proposals.
func (p *proposer) close() {
	p.mu.Lock()
	p.closed = true
	q := p.queue
	p.queue = nil
	p.mu.Unlock()
	fail(q, ErrClosed)
	p.giveUpAll(ErrUncertain)
}

func fail(props []*proposal, err error) {
	for _, pr := range props {
		pr.done(nil, err)
	}
}
