package cluster

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// health is the node's view of whether it can reach an etcd quorum. It
// turns bad when an etcd request fails or times out and good again when
// the probe's linearizable read succeeds.
type health struct {
	// mu guards the fields that follow.
	mu      sync.Mutex
	ok      bool
	since   time.Time     // when ok last changed
	reason  error         // why not ok
	changed chan struct{} // closed and replaced when ok turns false
}

func (h *health) init() {
	h.ok = true
	h.since = time.Now()
	h.changed = make(chan struct{})
}

// fail marks the quorum unreachable. It returns whether that is news.
func (h *health) fail(err error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.ok {
		return false
	}
	h.ok, h.since, h.reason = false, time.Now(), err
	close(h.changed)
	h.changed = make(chan struct{})
	return true
}

// recover marks the quorum reachable again. It returns whether that is
// news.
func (h *health) recover() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ok {
		return false
	}
	h.ok, h.since, h.reason = true, time.Now(), nil
	return true
}

// state returns whether the quorum is reachable, since when, why not, and
// a channel closed when it next turns unreachable.
func (h *health) state() (ok bool, since time.Time, reason error, lost <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ok, h.since, h.reason, h.changed
}

// Health says whether the node can reach an etcd quorum and since when.
type Health struct {
	OK     bool
	Since  time.Time
	Reason string // why not, when !OK
}

// Status is a node's state for stats.
type Status struct {
	NodeID  string
	Leader  bool
	Health  Health
	Applied int64 // etcd revision of the last batch applied
}

// Status returns the node's state.
func (n *Node) Status() Status {
	return Status{NodeID: n.cfg.NodeID, Leader: n.Leading(), Health: n.Health(), Applied: n.Applied()}
}

// Health returns the node's view of the etcd quorum.
func (n *Node) Health() Health {
	ok, since, reason, _ := n.health.state()
	h := Health{OK: ok, Since: since}
	if reason != nil {
		h.Reason = reason.Error()
	}
	return h
}

// markFailed records an etcd failure and logs when the node loses the
// quorum.
func (n *Node) markFailed(err error) {
	if n.ctx.Err() != nil {
		return
	}
	if n.health.fail(err) {
		n.log.Warn("etcd quorum unreachable; changes are refused until it returns", "err", err)
	}
}

// probe checks, while the quorum is unreachable, whether it is back: a
// linearizable read needs a quorum.
func (n *Node) probe() {
	const every = 250 * time.Millisecond
	for n.sleep(every) {
		ok, since, _, _ := n.health.state()
		if ok {
			continue
		}
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(n.ctx), n.cfg.Timeout)
		_, err := n.cli.Get(ctx, n.keys.meta())
		cancel()
		if err == nil && n.health.recover() {
			n.log.Info("etcd quorum reachable again; serving changes", "down_for", time.Since(since).Round(time.Millisecond))
		}
	}
}
