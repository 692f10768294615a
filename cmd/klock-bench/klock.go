package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/daemon"
)

// klockTTL is the lease ttl in the loop; the held leases of many-leases
// live an hour.
const (
	klockTTL     = 30 * time.Second
	klockHeldTTL = time.Hour
)

// klockBackend is the real klockd, started by the tool, driven through
// clientlib: either one client (one connection) shared by every worker of a
// cell, or one client per worker.
type klockBackend struct {
	name       string
	perConn    bool // one connection per worker
	args       []string
	dir        string
	srvs       []*server         // one klockd, or the nodes of a cluster (etcd.go)
	holder     *clientlib.Client // keeps the many-leases leases' owner connected
	version    string
	bin        string // the klockd binary, named in Settings when it is a -compare twin's
	closeExtra func() // stops what else the back end started (etcd)
}

// newKlockBackend starts klockd in memory (fsync "") or with a temp state
// dir and the given fsync policy.
func newKlockBackend(ctx context.Context, env *runEnv, name string, perConn bool, fsync string) (Backend, error) {
	bin, err := env.klockdBinary(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "klock-bench-klockd-")
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "klockd.sock")
	b := &klockBackend{name: name, perConn: perConn, dir: dir}
	b.args = []string{"--socket", socket, "--log-level", "warn"}
	if env.cfg.leases+env.cfg.session+4096 > daemon.DefaultMaxLeases || env.cfg.session >= daemon.DefaultMaxWaiters {
		// The held leases, the stall session and the cells' own leases.
		b.args = append(b.args, "--max-leases", "0", "--max-waiters", "0")
	}
	if fsync == "" {
		b.args = append(b.args, "--state-dir", "")
	} else {
		b.args = append(b.args, "--state-dir", filepath.Join(dir, "state"), "--fsync", fsync)
	}
	srv, err := startServer(ctx, name, socket, bin, b.args...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b.srvs = []*server{srv}
	if v, err := exec.Command(bin, "version").Output(); err == nil {
		b.version = strings.TrimSpace(string(v))
	}
	return b, nil
}

// klockdBinary returns -klockd, or builds ./cmd/klockd once per run.
func (e *runEnv) klockdBinary(ctx context.Context) (string, error) {
	if e.cfg.klockd != "" {
		return e.cfg.klockd, nil
	}
	if e.klockd != "" {
		return e.klockd, nil
	}
	dir, err := os.MkdirTemp("", "klock-bench-build-")
	if err != nil {
		return "", err
	}
	e.buildDir = dir
	out := filepath.Join(dir, "klockd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/klockd/klock/cmd/klockd")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("klock-bench: go build ./cmd/klockd (run from the klock module, or pass -klockd): %v: %s", err, msg)
	}
	fmt.Fprintf(e.log, "klock-bench: built %s\n", out)
	e.klockd = out
	return out, nil
}

func (b *klockBackend) Name() string { return b.name }

func (b *klockBackend) Settings() string {
	conn := "one clientlib connection shared by all workers of a cell"
	if b.perConn {
		conn = "one clientlib connection per worker"
	}
	if len(b.srvs) > 1 {
		conn = fmt.Sprintf("%d klockd nodes; worker i on node i mod %d; %s", len(b.srvs), len(b.srvs), conn)
		if !b.perConn {
			conn = strings.Replace(conn, "shared by all workers of a cell", "per node, shared by its workers", 1)
		}
	}
	version := b.version
	if b.bin != "" {
		version = b.bin + " (" + version + ")"
	}
	return fmt.Sprintf("%s %s; %s; acquire = AcquireLease (MUTATES, ttl 30s, bound to the bench process as clientlib binds by default, one agent per worker), release = ReleaseLease",
		version, quoteArgs(b.args[2:]), conn)
}

// RSS is the resident memory of the klockd processes, summed over the
// nodes of a cluster.
func (b *klockBackend) RSS() (int64, bool) {
	var sum int64
	for _, s := range b.srvs {
		n, ok := s.RSS()
		if !ok {
			return 0, false
		}
		sum += n
	}
	return sum, true
}

// dial connects to node i (mod the number of nodes).
func (b *klockBackend) dial(ctx context.Context, i int) (*clientlib.Client, error) {
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: b.srvs[i%len(b.srvs)].socket, NoReconnect: true})
	if err != nil {
		return nil, fmt.Errorf("klock-bench: dial klockd: %w", err)
	}
	return c, nil
}

func (b *klockBackend) Clients(ctx context.Context, w int) ([]Locker, io.Closer, error) {
	var cs closers
	shared := make([]*clientlib.Client, min(w, len(b.srvs)))
	for i := range shared {
		c, err := b.dial(ctx, i)
		if err != nil {
			cs.Close()
			return nil, nil, err
		}
		shared[i] = c
		cs = append(cs, c)
	}
	ls := make([]Locker, w)
	for i := range ls {
		agent := "w" + strconv.Itoa(i)
		// Distinct priorities, so contention produces both Wait-Die verdicts.
		if err := shared[0].RegisterAgent(ctx, agent, int64(i+1)); err != nil {
			cs.Close()
			return nil, nil, fmt.Errorf("klock-bench: register %s: %w", agent, err)
		}
		c := shared[i%len(shared)]
		if b.perConn && i >= len(shared) {
			var err error
			if c, err = b.dial(ctx, i); err != nil {
				cs.Close()
				return nil, nil, err
			}
			cs = append(cs, c)
		}
		ls[i] = &klockClient{c: c, agent: agent}
	}
	return ls, cs, nil
}

// Hold acquires n leases for one agent with acquire_many batches of 64,
// several batches in flight on one connection.
func (b *klockBackend) Hold(ctx context.Context, n int) error {
	c, err := b.dial(ctx, 0)
	if err != nil {
		return err
	}
	b.holder = c
	if err := c.RegisterAgent(ctx, "holder", 1<<40); err != nil {
		return err
	}
	if err := fillLeases(ctx, c, "holder", "held", "/held/", n); err != nil {
		return err
	}
	got, err := c.ActiveLeaseCount(ctx)
	if err != nil {
		return err
	}
	if got < n {
		return fmt.Errorf("klock-bench: klockd holds %d leases, want %d", got, n)
	}
	return nil
}

// Release ends the held leases' session and reports how long klockd took
// to answer.
func (b *klockBackend) Release(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	_, err := b.holder.EndSession(ctx, "holder", "held")
	return time.Since(t0), err
}

// fillLeases acquires n leases for agent in session on prefix0..prefix(n-1)
// with acquire_many batches of 64, several in flight on c.
func fillLeases(ctx context.Context, c *clientlib.Client, agent, session, prefix string, n int) error {
	// A few batches in flight keep the daemon busy while answers return;
	// each batch is ~4 KiB, so the client's write buffer can pass 64 KiB —
	// the case that exposed clientlib's write-buffer aliasing (55a1cfe).
	const batch, inFlight = 64, 8
	next := make(chan int)
	errs := make(chan error, inFlight)
	var wg sync.WaitGroup
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := range next {
				req := clientlib.AcquireRequest{AgentID: agent, SessionID: session, TTL: klockHeldTTL}
				for i := start; i < min(n, start+batch); i++ {
					req.Intents = append(req.Intents, clientlib.Intent{ResourceType: "FILE", ResourcePath: prefix + strconv.Itoa(i), Predicate: "MUTATES"})
				}
				res, err := c.AcquireMany(ctx, req)
				if err == nil && !res.Success {
					err = fmt.Errorf("klock-bench: hold denied: %s %s", res.Reason, res.Message)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var sendErr error
	for start := 0; start < n && sendErr == nil; start += batch {
		select {
		case next <- start:
		case sendErr = <-errs:
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	if sendErr != nil {
		return sendErr
	}
	return <-errs
}

func (b *klockBackend) Close() error {
	if b.holder != nil {
		b.holder.Close()
	}
	var err error
	for _, s := range b.srvs {
		if e := s.Close(); e != nil && err == nil {
			err = e
		}
	}
	if b.closeExtra != nil {
		b.closeExtra()
	}
	os.RemoveAll(b.dir)
	return err
}

// klockClient is one worker: its own agent, on a shared or own client.
type klockClient struct {
	c     *clientlib.Client
	agent string
}

func (k *klockClient) Acquire(ctx context.Context, resource string) (string, Outcome, error) {
	res, err := k.c.AcquireLease(ctx, k.agent, "bench", "FILE", resource, "MUTATES", klockTTL)
	if err != nil {
		return "", DeniedOther, fmt.Errorf("klock-bench: acquire: %w", err)
	}
	if res.Success {
		return res.LeaseID, Granted, nil
	}
	switch res.Reason {
	case "DIE":
		return "", DeniedDie, nil
	case "WAIT":
		return "", DeniedWait, nil
	}
	return "", DeniedOther, nil
}

func (k *klockClient) Release(ctx context.Context, resource, token string) error {
	ok, err := k.c.ReleaseLease(ctx, token)
	if err != nil {
		return fmt.Errorf("klock-bench: release: %w", err)
	}
	if !ok {
		return fmt.Errorf("klock-bench: release of %s on %s: not released", token, resource)
	}
	return nil
}
