package cluster_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/klockd/klock/daemon/cluster"
	"github.com/klockd/klock/tests/etcdtest"
)

// chain is a test state machine: it folds every entry into a hash, so two
// nodes agree only if they applied the same entries, in the same order,
// with the same times and seeds.
type chain struct {
	mu      sync.Mutex
	Hash    string   `msgpack:"h"`
	N       int      `msgpack:"n"`
	Due     int64    `msgpack:"due"`   // a deadline for ticks (set by a change "due:<ms>")
	Ticks   int      `msgpack:"ticks"` // ticks applied while something was due
	Owned   []string `msgpack:"owned"` // owners that proposed "own"
	Dropped []string `msgpack:"drops"` // owners dropped
}

func (c *chain) Apply(e *cluster.Entry, _ any) any {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := sha256.New()
	fmt.Fprintf(h, "%s|%d|%d|%s|%d|%d|%x|%x", c.Hash, e.Rev, e.Index, e.Owner, e.Time, e.Kind, e.Body, e.Seed)
	c.Hash = hex.EncodeToString(h.Sum(nil))
	c.N++
	switch e.Kind {
	case cluster.KindChange:
		var ms int64
		if _, err := fmt.Sscanf(string(e.Body), "due:%d", &ms); err == nil {
			c.Due = ms
		}
		if string(e.Body) == "own" {
			c.Owned = append(c.Owned, e.Owner)
		}
	case cluster.KindTick:
		if c.Due != 0 && e.Time >= c.Due {
			c.Due = 0
			c.Ticks++
		}
	case cluster.KindDropOwner:
		for i, o := range c.Owned {
			if o == string(e.Body) {
				c.Owned = append(c.Owned[:i], c.Owned[i+1:]...)
				c.Dropped = append(c.Dropped, o)
				break
			}
		}
	}
	return c.N
}

func (c *chain) Snapshot() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return msgpack.Marshal(c)
}

func (c *chain) Restore(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var x chain
	if err := msgpack.Unmarshal(b, &x); err != nil {
		return err
	}
	c.Hash, c.N, c.Due, c.Ticks, c.Owned, c.Dropped = x.Hash, x.N, x.Due, x.Ticks, x.Owned, x.Dropped
	return nil
}

func (c *chain) NextDeadline() (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Due, c.Due != 0
}

func (c *chain) Owners() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.Owned...)
}

func (c *chain) state() (string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Hash, c.N
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startNode(t *testing.T, ec *etcdtest.Cluster, id string, sm cluster.StateMachine, tune func(*cluster.Config)) *cluster.Node {
	t.Helper()
	cfg := cluster.Config{
		Endpoints:    ec.Endpoints(),
		Prefix:       "/test/",
		NodeID:       id,
		StateMachine: sm,
		SessionTTL:   2 * time.Second,
		Timeout:      2 * time.Second,
		Settings:     map[string]string{"max-leases": "10"},
		Logger:       testLogger(t).With("test_node", id),
	}
	if tune != nil {
		tune(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := cluster.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

// propose proposes a change and waits for its answer.
func propose(n *cluster.Node, kind cluster.Kind, body string) (any, error) {
	type answer struct {
		res any
		err error
	}
	ch := make(chan answer, 1)
	n.Propose(kind, []byte(body), nil, func(res any, err error) { ch <- answer{res, err} })
	a := <-ch
	return a.res, a.err
}

func barrier(t *testing.T, n *cluster.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, n.Barrier(ctx))
}

// waitFor polls cond until it holds or 20 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNodesApplyOneOrder: changes proposed concurrently on three nodes are
// applied by all three in one order, and a read barrier on any node sees
// every change answered before it.
func TestNodesApplyOneOrder(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	var sms [3]*chain
	var nodes [3]*cluster.Node
	for i := range nodes {
		sms[i] = new(chain)
		nodes[i] = startNode(t, ec, fmt.Sprintf("n%d", i), sms[i], nil)
	}
	var wg sync.WaitGroup
	const perWorker = 30
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nodes[w%3]
			for i := 0; i < perWorker; i++ {
				_, err := propose(n, cluster.KindChange, fmt.Sprintf("w%d-%d", w, i))
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Every change was answered: a barrier on each node makes it current.
	for _, n := range nodes {
		barrier(t, n)
	}
	h0, n0 := sms[0].state()
	require.Equal(t, 12*perWorker, n0)
	for _, sm := range sms[1:] {
		h, n := sm.state()
		require.Equal(t, n0, n)
		require.Equal(t, h0, h)
	}
}

// TestJoinFromSnapshot: the leader writes snapshots and deletes the log
// below them; a node that starts later loads the snapshot and the log after
// it and reaches the same state.
func TestJoinFromSnapshot(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	a := new(chain)
	na := startNode(t, ec, "a", a, func(c *cluster.Config) { c.SnapshotEvery = 20 })
	waitFor(t, "a to lead", na.Leading)
	for i := 0; i < 95; i++ {
		_, err := propose(na, cluster.KindChange, fmt.Sprintf("c%d", i))
		require.NoError(t, err)
	}
	cli := ec.Client(t)
	// Snapshots were written and the log below the one before the last
	// deleted: fewer batches than changes remain.
	waitFor(t, "the log to be trimmed", func() bool {
		resp, err := cli.Get(context.Background(), "/test/log/", clientWithPrefix()...)
		return err == nil && resp.Count < 60
	})
	b := new(chain)
	nb := startNode(t, ec, "b", b, nil)
	barrier(t, nb)
	ha, _ := a.state()
	hb, _ := b.state()
	require.Equal(t, ha, hb)
	_, err := propose(nb, cluster.KindChange, "after")
	require.NoError(t, err)
	barrier(t, na)
	ha, _ = a.state()
	hb, _ = b.state()
	require.Equal(t, ha, hb)
}

// TestLeaderTicksAndDrops: the leader proposes a tick once a deadline is
// due, and drops what a node owned once its etcd session lapses.
func TestLeaderTicksAndDrops(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	a, b := new(chain), new(chain)
	na := startNode(t, ec, "a", a, nil)
	waitFor(t, "a to lead", na.Leading)
	nb := startNode(t, ec, "b", b, nil)

	due := time.Now().Add(300 * time.Millisecond).UnixMilli()
	_, err := propose(nb, cluster.KindChange, fmt.Sprintf("due:%d", due))
	require.NoError(t, err)
	waitFor(t, "a tick", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.Ticks == 1 })

	_, err = propose(nb, cluster.KindChange, "own")
	require.NoError(t, err)
	owner := nb.Owner()
	require.NoError(t, nb.Close(context.Background())) // revokes b's session
	waitFor(t, "b's ownership to be dropped", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.Dropped) == 1 && a.Dropped[0] == owner && len(a.Owned) == 0
	})
}

// TestQuorumLoss: with two of three members gone, changes and reads fail
// with ErrUnavailable (at once, once the node knows), and the node serves
// again when a member returns.
func TestQuorumLoss(t *testing.T) {
	ec := etcdtest.Start(t, 3)
	sm := new(chain)
	n := startNode(t, ec, "a", sm, func(c *cluster.Config) { c.Endpoints = ec.Endpoints()[:1] })
	_, err := propose(n, cluster.KindChange, "before")
	require.NoError(t, err)
	ec.Members[1].Kill()
	// If the killed member led, a change meets the election once.
	waitFor(t, "a change with one member down", func() bool {
		_, err := propose(n, cluster.KindChange, "one down")
		return err == nil
	})
	ec.Members[2].Kill()
	_, err = propose(n, cluster.KindChange, "two down")
	require.True(t, errors.Is(err, cluster.ErrUncertain) || errors.Is(err, cluster.ErrUnavailable), "got %v", err)
	_, err = propose(n, cluster.KindChange, "still down")
	require.ErrorIs(t, err, cluster.ErrUnavailable)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.ErrorIs(t, n.Barrier(ctx), cluster.ErrUnavailable)
	require.False(t, n.Health().OK)

	ec.Members[2].Restart(t)
	waitFor(t, "the quorum to return", func() bool { return n.Health().OK })
	_, err = propose(n, cluster.KindChange, "back")
	require.NoError(t, err)
	barrier(t, n)
}

// TestSettingsMustMatch: a node with other settings refuses to join.
func TestSettingsMustMatch(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	startNode(t, ec, "a", new(chain), nil)
	_, err := cluster.Start(context.Background(), cluster.Config{
		Endpoints: ec.Endpoints(), Prefix: "/test/", NodeID: "b", StateMachine: new(chain),
		Settings: map[string]string{"max-leases": "20"}, Logger: testLogger(t),
	})
	require.ErrorContains(t, err, "max-leases is 20 here and 10 in the cluster")
}

func clientWithPrefix() []clientv3.OpOption {
	return []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}
}

// TestNodeIDInUse: a second node under the id of a running one refuses to
// start; once that one is gone, its id is free again at once.
func TestNodeIDInUse(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	// A session ttl long enough that a loaded machine does not let the
	// running node's session lapse for real while the second one waits.
	const ttl = 6 * time.Second
	a := startNode(t, ec, "same", new(chain), func(c *cluster.Config) { c.SessionTTL = ttl })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := cluster.Start(ctx, cluster.Config{
		Endpoints: ec.Endpoints(), Prefix: "/test/", NodeID: "same", StateMachine: new(chain),
		SessionTTL: ttl, Settings: map[string]string{"max-leases": "10"}, Logger: testLogger(t),
	})
	require.ErrorContains(t, err, `node id "same" is in use by a running klockd`)
	require.NoError(t, a.Close(ctx))
	startNode(t, ec, "same", new(chain), nil)
}
