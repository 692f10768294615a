package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/tests/harness"
)

// crashLease is what the test knows about one lease from acknowledged
// replies only.
type crashLease struct {
	id        string
	fence     uint64
	expiresAt time.Time
	client    int
	released  bool // its release was acknowledged
	inDoubt   bool // a release was sent but never answered: either outcome is fine
}

// crashModel is every lease ever acknowledged, across rounds.
type crashModel struct {
	mu       sync.Mutex
	leases   map[string]*crashLease
	maxFence uint64
}

func (m *crashModel) granted(l *crashLease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leases[l.id] = l
	m.maxFence = max(m.maxFence, l.fence)
}

// held returns client i's leases that are acknowledged and not released.
func (m *crashModel) held(i int) []*crashLease {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*crashLease
	for _, l := range m.leases {
		if l.client == i && !l.released && !l.inDoubt {
			out = append(out, l)
		}
	}
	return out
}

const (
	crashClients = 32
	crashRounds  = 20
	crashTTL     = 30 * time.Second
)

// TestCrashKeepsAcknowledgedLeases runs 32 clients acquiring, heartbeating
// and releasing, kills klockd with SIGKILL at a random moment, restarts it
// on the same state directory and checks that every acknowledged,
// unreleased, unexpired lease is active with the same id and fence, that no
// released lease came back, and that new fences are above every fence seen.
// Twenty rounds on one state directory, so later rounds also recover what
// earlier ones left.
func TestCrashKeepsAcknowledgedLeases(t *testing.T) {
	rounds := crashRounds
	if testing.Short() {
		rounds = 4
	}
	d := harness.Start(t, harness.Options{})
	model := &crashModel{leases: map[string]*crashLease{}}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 4))
	start := time.Now()
	for round := range rounds {
		acks := crashRound(t, d, model, round, rng)
		d.Restart(t)
		checkCrashModel(t, d, model, round)
		t.Logf("round %d: %d acknowledged operations before kill -9; %d leases known, max fence %d", round, acks, len(model.leases), model.maxFence)
	}
	recovered := "state recovered"
	if harness.ClusterMode() {
		recovered = "joined the cluster" // the state comes from etcd
	}
	if n := strings.Count(d.Logs(), recovered); n < rounds+1 {
		t.Errorf("daemon logged %d recoveries; want %d", n, rounds+1)
	}
	var files []string
	if ents, err := os.ReadDir(d.StateDir); err == nil {
		for _, e := range ents {
			files = append(files, e.Name())
		}
	}
	t.Logf("%d rounds in %s; state directory holds %v", rounds, time.Since(start).Round(time.Millisecond), files)
}

// crashRound runs the clients until klockd is killed at a random moment
// (after at least a few acknowledged operations), and returns how many
// operations were acknowledged.
func crashRound(t *testing.T, d *harness.Daemon, model *crashModel, round int, rng *rand.Rand) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var acks atomic.Int64
	warm := make(chan struct{})
	var warmOnce sync.Once
	var wg sync.WaitGroup
	errs := make(chan error, crashClients)
	for i := range crashClients {
		c, err := clientlib.Dial(ctx, clientlib.Options{Socket: d.Socket, NoReconnect: true})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		seed := uint64(rng.Int64()) // drawn here: rng is not safe for concurrent use
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			err := crashClient(ctx, c, model, i, round, seed, func() {
				if acks.Add(1) == 64 {
					warmOnce.Do(func() { close(warm) })
				}
			})
			if err != nil {
				errs <- err
			}
		}()
	}
	select {
	case <-warm:
	case <-ctx.Done():
		t.Fatalf("round %d: clients made no progress; logs:\n%s", round, d.Logs())
	}
	// The kill moment is the test's random input, not a synchronisation:
	// anywhere from at once to most of a second into the load.
	time.Sleep(time.Duration(rng.Int64N(int64(700 * time.Millisecond))))
	d.Kill(t)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("round %d: %v", round, err)
	}
	return acks.Load()
}

// crashClient is one client's loop: it runs until the daemon dies (a call
// fails with a connection error) and records only acknowledged outcomes. A
// non-connection error (a wrong answer) is returned.
func crashClient(ctx context.Context, c *clientlib.Client, model *crashModel, i, round int, seed uint64, ack func()) error {
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	agent := fmt.Sprintf("crash-%d", i)
	if err := c.RegisterAgent(ctx, agent, int64(1000+i)); err != nil {
		return nil // killed before we started
	}
	held := model.held(i)
	for n := 0; ; n++ {
		switch {
		case len(held) < 4 || (len(held) < 12 && rng.IntN(2) == 0):
			path := fmt.Sprintf("/crash/%d/%d-%d", i, round, n)
			res, err := c.AcquireLease(ctx, agent, "s", "FILE", path, "MUTATES", crashTTL)
			if err != nil {
				return nil
			}
			if !res.Success {
				return fmt.Errorf("client %d: acquire %s denied (%s: %s) on a path only it uses", i, path, res.Reason, res.Message)
			}
			l := &crashLease{id: res.LeaseID, fence: res.Fence, expiresAt: res.ExpiresAt, client: i}
			model.granted(l)
			held = append(held, l)
		case rng.IntN(2) == 0:
			l := held[rng.IntN(len(held))]
			exp, err := c.Heartbeat(ctx, l.id, 0)
			if err != nil {
				return nil
			}
			model.mu.Lock()
			l.expiresAt = exp
			model.mu.Unlock()
		default:
			k := rng.IntN(len(held))
			l := held[k]
			model.mu.Lock()
			l.inDoubt = true // until the answer arrives
			model.mu.Unlock()
			ok, err := c.ReleaseLease(ctx, l.id)
			if err != nil {
				return nil
			}
			if !ok {
				return fmt.Errorf("client %d: release of its lease %s answered false", i, l.id)
			}
			model.mu.Lock()
			l.inDoubt, l.released = false, true
			model.mu.Unlock()
			held = append(held[:k], held[k+1:]...)
		}
		ack()
	}
}

// checkCrashModel compares the restarted daemon's leases with the model.
func checkCrashModel(t *testing.T, d *harness.Daemon, model *crashModel, round int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := d.Client(t)
	list, truncated, err := c.ListLeases(ctx, clientlib.LeaseFilter{Prefix: "FILE:/crash/", Limit: 10000})
	if err != nil {
		t.Fatalf("round %d: list_leases after restart: %v", round, err)
	}
	if truncated {
		t.Fatalf("round %d: list_leases truncated at %d leases", round, len(list))
	}
	active := make(map[string]uint64, len(list))
	for _, l := range list {
		active[l.LeaseID] = l.Fence
	}
	// Leases expiring within this margin may legitimately be gone by now.
	horizon := time.Now().Add(2 * time.Second)
	model.mu.Lock()
	for _, l := range model.leases {
		fence, ok := active[l.id]
		switch {
		case l.released && ok:
			t.Errorf("round %d: lease %s (fence %d) was released and acknowledged, but is active after the restart", round, l.id, l.fence)
		case l.released || l.inDoubt || l.expiresAt.Before(horizon):
		case !ok:
			t.Errorf("round %d: acknowledged lease %s (fence %d, expires %s) is missing after kill -9 and restart", round, l.id, l.fence, l.expiresAt.Format(time.RFC3339Nano))
		case fence != l.fence:
			t.Errorf("round %d: lease %s came back with fence %d; want %d", round, l.id, fence, l.fence)
		}
	}
	maxFence := model.maxFence
	model.mu.Unlock()
	if t.Failed() {
		t.FailNow()
	}

	probe := fmt.Sprintf("crash-probe-%d", round)
	if err := c.RegisterAgent(ctx, probe, 1); err != nil {
		t.Fatal(err)
	}
	res, err := c.AcquireLease(ctx, probe, "s", "FILE", "/probe/"+probe, "MUTATES", time.Minute)
	if err != nil || !res.Success {
		t.Fatalf("round %d: acquire after restart = %+v, %v", round, res, err)
	}
	if res.Fence <= maxFence {
		t.Fatalf("round %d: fence after restart is %d; want above every fence seen (%d)", round, res.Fence, maxFence)
	}
	if _, err := c.ReleaseLease(ctx, res.LeaseID); err != nil {
		t.Fatal(err)
	}
	model.mu.Lock()
	model.maxFence = max(model.maxFence, res.Fence)
	model.mu.Unlock()
}
