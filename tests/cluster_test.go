package tests

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/etcdtest"
	"github.com/klockd/klock/tests/harness"
)

// Cluster mode (README "Several machines"): three etcd members and three
// klockds on loopback, started by the tests (Debian's etcd-server).

// klockCluster is a test cluster: etcd members and the klockd nodes on them.
type klockCluster struct {
	etcd  *etcdtest.Cluster
	nodes []*harness.Daemon
}

// startKlockCluster starts members etcd members and nodes klockds, every
// klockd told every member.
func startKlockCluster(t *testing.T, members, nodes int) *klockCluster {
	t.Helper()
	if harness.ClusterMode() {
		t.Skip("cluster mode: these tests start their own cluster, and ran in the normal run")
	}
	kc := &klockCluster{etcd: etcdtest.Start(t, members)}
	for i := range nodes {
		kc.nodes = append(kc.nodes, harness.Start(t, harness.Options{Cluster: &harness.ClusterOptions{
			Etcd:   kc.etcd.EndpointList(),
			Prefix: "/klock/",
			NodeID: fmt.Sprintf("node-%c", 'a'+i),
		}}))
	}
	return kc
}

// sameTable checks that every node lists the same active leases (a read,
// so each node first applies all that etcd holds) and returns them.
func (kc *klockCluster) sameTable(t *testing.T, ctx context.Context) []protocol.LeaseInfo {
	t.Helper()
	var first []protocol.LeaseInfo
	for i, d := range kc.nodes {
		c := d.Client(t)
		ls, _, err := c.ListLeases(ctx, clientlib.LeaseFilter{})
		if err != nil {
			t.Fatalf("node %d ListLeases = %v", i, err)
		}
		if i == 0 {
			first = ls
			continue
		}
		if !slices.Equal(tableText(first), tableText(ls)) {
			t.Fatalf("node 0 lists %v, node %d lists %v", tableText(first), i, tableText(ls))
		}
	}
	return first
}

func tableText(ls []protocol.LeaseInfo) []string {
	var out []string
	for _, l := range ls {
		out = append(out, fmt.Sprintf("%s@%d", l.LeaseID, l.Fence))
	}
	return out
}

// isUnavailable reports whether err is klockd's UNAVAILABLE answer (as the
// client returns it, after whatever retries it makes).
func isUnavailable(err error) bool {
	var ke *clientlib.Error
	return errors.As(err, &ke) && ke.Code == protocol.CodeUnavailable ||
		err != nil && strings.Contains(err.Error(), string(protocol.CodeUnavailable))
}

// notYet reports an error that only says the cluster is not serving yet:
// UNAVAILABLE, or a brief context that ended first. A node's request to a
// killed etcd member may wait up to its etcd timeout (5 s) before the
// client library fails over, longer than briefCtx; a node that never
// answers still fails the waitFor around it.
func notYet(err error) bool {
	return isUnavailable(err) || errors.Is(err, context.DeadlineExceeded)
}

// briefCtx bounds a call expected to fail: a client may retry UNAVAILABLE
// until its context ends.
func briefCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestClusterNoConflictingLeases runs the safety checker with its clients
// spread over three nodes: no two conflicting leases are ever held, fences
// are unique across nodes, and afterwards every node lists the same table
// and reports the same last fence.
func TestClusterNoConflictingLeases(t *testing.T) {
	kc := startKlockCluster(t, 3, 3)
	clients := make([]*clientlib.Client, 48)
	for i := range clients {
		clients[i] = kc.nodes[i%3].Client(t)
	}
	top := checkNoConflicts(t, clients, 3*time.Second)
	ctx := testCtx(t)
	kc.sameTable(t, ctx)
	for i, d := range kc.nodes {
		st, err := d.Client(t).Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Fence != top {
			t.Errorf("node %d: last fence %d; the clients saw %d", i, st.Fence, top)
		}
	}
}

// TestClusterWaitDie: a junior on node B is refused DIE by a holder on node
// A, and a senior parked (WAIT) on node C is granted when A's holder
// releases, with a higher fence.
func TestClusterWaitDie(t *testing.T) {
	kc := startKlockCluster(t, 3, 3)
	ctx := testCtx(t)
	a, b, c := kc.nodes[0].Client(t), kc.nodes[1].Client(t), kc.nodes[2].Client(t)
	registerAgents(t, ctx, a, map[string]int64{"senior": 1, "holder": 2, "junior": 3})

	held, err := a.AcquireLease(ctx, "holder", "s", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	if err != nil || !held.Success {
		t.Fatalf("holder on A: %+v, %v", held, err)
	}
	r, err := b.AcquireLease(ctx, "junior", "s", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	if err != nil || r.Success || r.Reason != "DIE" || r.HeldBy != "holder" {
		t.Fatalf("junior on B: %+v, %v; want DIE held by holder", r, err)
	}

	type answer struct {
		r   *clientlib.AcquireResult
		err error
	}
	parked := make(chan answer, 1)
	go func() {
		r, err := c.AcquireOnce(ctx, clientlib.AcquireRequest{
			AgentID: "senior", SessionID: "s", TTL: time.Minute, WaitTimeout: 20 * time.Second,
			Intents: fileIntent("/src/auth.ts", "MUTATES"),
		})
		parked <- answer{r, err}
	}()
	// The senior is queued in the cluster's table: B, which did not park
	// it, sees it waiting.
	waitFor(t, "the senior to be queued", func() bool {
		ags, _, err := b.ListAgents(ctx, 0)
		for _, g := range ags {
			if g.AgentID == "senior" && g.Waiting == 1 {
				return err == nil
			}
		}
		return false
	})
	// A queued senior makes a junior that would otherwise wait DIE too,
	// on any node: holder (2) is older than junior (3) anyway; the senior
	// decides for an agent between them.
	if ok, err := a.ReleaseLease(ctx, held.LeaseID); err != nil || !ok {
		t.Fatalf("release on A = %v, %v", ok, err)
	}
	got := <-parked
	if got.err != nil || !got.r.Success {
		t.Fatalf("senior parked on C: %+v, %v; want granted", got.r, got.err)
	}
	if got.r.Fence <= held.Fence {
		t.Errorf("senior's fence %d is not above the holder's %d", got.r.Fence, held.Fence)
	}
	kc.sameTable(t, ctx)
	// stats names each node, and one of them leads.
	waitFor(t, "one leader", func() bool {
		leaders := 0
		for i, d := range kc.nodes {
			st, err := d.Client(t).Stats(ctx)
			if err != nil || st.Cluster == nil || st.Cluster.Node != fmt.Sprintf("node-%c", 'a'+i) || !st.Cluster.EtcdOK {
				t.Fatalf("node %d stats = %+v, %v", i, st, err)
			}
			if st.Cluster.Leader {
				leaders++
			}
		}
		return leaders == 1
	})
}

// TestClusterKillNode: kill -9 of one klockd under load. The other nodes
// keep serving, a lease taken through the killed node lives on, and the
// restarted node catches up and serves the same table.
func TestClusterKillNode(t *testing.T) {
	kc := startKlockCluster(t, 3, 3)
	ctx := testCtx(t)
	a := kc.nodes[0].Client(t)
	registerAgents(t, ctx, a, map[string]int64{"keeper": 1})
	kept, err := a.AcquireLease(ctx, "keeper", "s", "FILE", "/kept", "MUTATES", time.Minute)
	if err != nil || !kept.Success {
		t.Fatalf("AcquireLease on A = %+v, %v", kept, err)
	}

	// Load on B and C: acquire and release in a loop, no errors allowed.
	var ops atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := range 8 {
		c := kc.nodes[1+w%2].Client(t)
		agent := fmt.Sprintf("load-%d", w)
		if err := c.RegisterAgent(ctx, agent, int64(100+w)); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := c.AcquireLease(ctx, agent, "s", "FILE", fmt.Sprintf("/load/%d", w%4), "MUTATES", time.Minute)
				if err != nil {
					errc <- fmt.Errorf("%s acquire: %w", agent, err)
					return
				}
				if r.Success {
					if _, err := c.ReleaseLease(ctx, r.LeaseID); err != nil {
						errc <- fmt.Errorf("%s release: %w", agent, err)
						return
					}
				}
				ops.Add(1)
			}
		}()
	}
	waitFor(t, "load before the kill", func() bool { return ops.Load() > 50 })
	kc.nodes[0].Kill(t)
	before := ops.Load()
	waitFor(t, "load after the kill", func() bool { return ops.Load() > before+200 })
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	t.Logf("%d operations on B and C, %d of them after A was killed", ops.Load(), ops.Load()-before)

	// The lease taken through A lives on (until its ttl or a release).
	b := kc.nodes[1].Client(t)
	ls, _, err := b.ListLeases(ctx, clientlib.LeaseFilter{AgentID: "keeper"})
	if err != nil || len(ls) != 1 || ls[0].LeaseID != kept.LeaseID {
		t.Fatalf("B lists keeper's leases %+v, %v; want %s", ls, err, kept.LeaseID)
	}
	kc.nodes[0].Restart(t)
	table := kc.sameTable(t, ctx)
	if len(table) != 1 || table[0].LeaseID != kept.LeaseID {
		t.Errorf("after the restart the table is %v; want only %s", tableText(table), kept.LeaseID)
	}
	// Released from another node than the one that granted it.
	if ok, err := b.ReleaseLease(ctx, kept.LeaseID); err != nil || !ok {
		t.Fatalf("release on B of a lease granted on A = %v, %v", ok, err)
	}
	if n, err := kc.nodes[0].Client(t).ActiveLeaseCount(ctx); err != nil || n != 0 {
		t.Errorf("restarted A counts %d leases, %v; want 0", n, err)
	}
}

// TestClusterEtcdQuorum: with one etcd member of three killed, service
// goes on; with two, changes and reads are answered UNAVAILABLE and
// nothing is granted; with them back, service resumes on the table as it
// was.
func TestClusterEtcdQuorum(t *testing.T) {
	kc := startKlockCluster(t, 3, 2)
	// Each phase has its own bound: killing and restarting members takes
	// a while on a loaded machine, longer than one waitTimeout in all.
	ctx := testCtx(t)
	a, b := kc.nodes[0].Client(t), kc.nodes[1].Client(t)
	registerAgents(t, ctx, a, map[string]int64{"x": 1, "y": 2})
	before, err := a.AcquireLease(ctx, "x", "s", "FILE", "/before", "MUTATES", time.Minute)
	if err != nil || !before.Success {
		t.Fatalf("AcquireLease = %+v, %v", before, err)
	}

	// One member down: a change may meet the failover once, then goes on.
	kc.etcd.Members[0].Kill()
	waitFor(t, "a grant with one member down", func() bool {
		r, err := b.AcquireLease(briefCtx(t), "y", "s", "FILE", "/one-down", "MUTATES", time.Minute)
		if err != nil && !notYet(err) {
			t.Fatalf("with one member down: %v", err)
		}
		return err == nil && r.Success
	})

	// Two down: no quorum. Every change and read is UNAVAILABLE, on both
	// nodes; nothing is granted.
	kc.etcd.Members[1].Kill()
	for i, c := range []*clientlib.Client{a, b} {
		waitFor(t, "UNAVAILABLE with two members down", func() bool {
			r, err := c.AcquireLease(briefCtx(t), "x", "s", "FILE", "/no-quorum", "MUTATES", time.Minute)
			if err == nil && r.Success {
				t.Fatalf("node %d granted a lease without an etcd quorum: %+v", i, r)
			}
			return isUnavailable(err)
		})
		if _, err := c.ReleaseLease(briefCtx(t), before.LeaseID); !isUnavailable(err) {
			t.Errorf("node %d release without quorum = %v; want UNAVAILABLE", i, err)
		}
		if _, _, err := c.ListLeases(briefCtx(t), clientlib.LeaseFilter{}); !isUnavailable(err) {
			t.Errorf("node %d list_leases without quorum = %v; want UNAVAILABLE", i, err)
		}
		if st, err := c.Stats(testCtx(t)); err != nil || st.Cluster == nil || st.Cluster.EtcdOK || st.Cluster.Error == "" {
			t.Errorf("node %d stats without quorum = %+v, %v; want an answer saying etcd is unreachable and why", i, st, err)
		}
	}

	// Back: service resumes, on the same table.
	kc.etcd.Members[0].Restart(t)
	kc.etcd.Members[1].Restart(t)
	kc.etcd.WaitHealthy(t)
	waitFor(t, "service to resume", func() bool {
		r, err := a.AcquireLease(briefCtx(t), "x", "s", "FILE", "/after", "MUTATES", time.Minute)
		if err != nil && !notYet(err) {
			t.Fatalf("after the quorum returned: %v", err)
		}
		return err == nil && r.Success
	})
	for i, c := range []*clientlib.Client{a, b} {
		// Each node notices on its own (a probe) that the quorum is back.
		waitFor(t, fmt.Sprintf("node %d to serve reads again", i), func() bool {
			_, _, err := c.ListLeases(briefCtx(t), clientlib.LeaseFilter{})
			if err != nil && !notYet(err) {
				t.Fatalf("node %d after the quorum returned: %v", i, err)
			}
			return err == nil
		})
	}
	var got []string
	for _, l := range kc.sameTable(t, testCtx(t)) {
		got = append(got, l.Resource)
	}
	slices.Sort(got)
	want := []string{"FILE:/after", "FILE:/before", "FILE:/one-down"}
	if !slices.Equal(got, want) && !slices.Equal(got, []string{"FILE:/after", "FILE:/before", "FILE:/no-quorum", "FILE:/one-down"}) {
		t.Errorf("table after the outage holds %v; want %v", got, want)
	}
}
