package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/klockd/klock/tests/etcdtest"
)

// The etcd back ends (README "Several machines"): klockd in cluster mode,
// one node on one etcd member (klock-etcd) or three nodes on three members
// (klock-etcd3), and etcd's own lock, concurrency.Mutex, on one member
// (etcd-mutex). The tool starts Debian's etcd (etcd-server) itself, on
// loopback ports, with its data in a temp dir.

// newKlockEtcdBackend starts members etcd members and as many klockd nodes
// in cluster mode, node i on member i.
func newKlockEtcdBackend(ctx context.Context, env *runEnv, name string, members int) (Backend, error) {
	bin, err := env.klockdBinary(ctx)
	if err != nil {
		return nil, err
	}
	ec, err := etcdtest.StartProcess(members)
	if err != nil {
		return nil, fmt.Errorf("klock-bench: %s: %w", name, err)
	}
	dir, err := os.MkdirTemp("", "klock-bench-klockd-")
	if err != nil {
		ec.Close()
		return nil, err
	}
	b := &klockBackend{name: name, dir: dir, closeExtra: ec.Close}
	for i, m := range ec.Members {
		socket := filepath.Join(dir, fmt.Sprintf("klockd%d.sock", i))
		args := []string{"--socket", socket, "--log-level", "warn", "--state-dir", filepath.Join(dir, fmt.Sprintf("state%d", i)),
			"--etcd", m.Client, "--node-id", fmt.Sprintf("bench%d", i)}
		srv, err := startServer(ctx, fmt.Sprintf("%s node %d", name, i), socket, bin, args...)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.srvs = append(b.srvs, srv)
	}
	// As Settings shows them: the socket is dropped, the rest per node.
	b.args = []string{"--socket", "S", "--log-level", "warn", "--state-dir", "DIR", "--etcd", "MEMBER_URL", "--node-id", "benchN"}
	if v, err := exec.Command(bin, "version").Output(); err == nil {
		b.version = strings.TrimSpace(string(v))
	}
	b.version += "; " + etcdVersion(ec)
	return b, nil
}

// etcdVersion reports the etcd members' version and settings.
func etcdVersion(ec *etcdtest.Cluster) string {
	v := "etcd"
	if out, err := exec.Command("etcd", "--version").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 3 {
			v += " " + f[2]
		}
	}
	return fmt.Sprintf("%s, %d member(s) on loopback, WAL fsync on, %s", v, len(ec.Members), etcdtest.Flags)
}

// etcdMutexBackend is etcd's own lock: concurrency.Mutex, each worker on
// its own session, TryLock and Unlock.
type etcdMutexBackend struct {
	ec   *etcdtest.Cluster
	cli  *clientv3.Client
	held *concurrency.Session // the many-leases mutexes' session
}

func newEtcdMutexBackend() (Backend, error) {
	ec, err := etcdtest.StartProcess(1)
	if err != nil {
		return nil, fmt.Errorf("klock-bench: etcd-mutex: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: ec.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		ec.Close()
		return nil, err
	}
	return &etcdMutexBackend{ec: ec, cli: cli}, nil
}

func (b *etcdMutexBackend) Name() string { return "etcd-mutex" }

func (b *etcdMutexBackend) Settings() string {
	return etcdVersion(b.ec) + "; go.etcd.io/etcd/client/v3/concurrency.Mutex, one session (lease ttl 60s) per worker on one shared client; acquire = TryLock, release = Unlock"
}

func (b *etcdMutexBackend) RSS() (int64, bool) { return processRSS(b.ec.Members[0].PID()) }

func (b *etcdMutexBackend) Clients(ctx context.Context, w int) ([]Locker, io.Closer, error) {
	var cs closers
	ls := make([]Locker, w)
	for i := range ls {
		s, err := concurrency.NewSession(b.cli, concurrency.WithTTL(60), concurrency.WithContext(ctx))
		if err != nil {
			cs.Close()
			return nil, nil, fmt.Errorf("klock-bench: etcd session: %w", err)
		}
		cs = append(cs, sessionCloser{s})
		ls[i] = &etcdMutexClient{s: s, held: make(map[string]*concurrency.Mutex)}
	}
	return ls, cs, nil
}

// Hold takes n mutexes on one session, 64 TryLocks in flight.
func (b *etcdMutexBackend) Hold(ctx context.Context, n int) error {
	s, err := concurrency.NewSession(b.cli, concurrency.WithTTL(3600), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("klock-bench: etcd session: %w", err)
	}
	b.held = s
	next := make(chan int)
	errc := make(chan error, 64)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := concurrency.NewMutex(s, fmt.Sprintf("/klock-bench/held/%d", i)).TryLock(ctx); err != nil {
					errc <- fmt.Errorf("klock-bench: etcd hold: %w", err)
					return
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case next <- i:
			continue
		case err = <-errc:
		}
		break
	}
	close(next)
	wg.Wait()
	if err == nil && len(errc) > 0 {
		err = <-errc
	}
	return err
}

func (b *etcdMutexBackend) Close() error {
	if b.held != nil {
		b.held.Orphan()
	}
	b.cli.Close()
	b.ec.Close()
	return nil
}

type sessionCloser struct{ s *concurrency.Session }

func (c sessionCloser) Close() error { return c.s.Close() }

// etcdMutexClient is one worker: a session and the mutexes it holds.
type etcdMutexClient struct {
	s    *concurrency.Session
	held map[string]*concurrency.Mutex
}

func (c *etcdMutexClient) Acquire(ctx context.Context, resource string) (string, Outcome, error) {
	m := concurrency.NewMutex(c.s, "/klock-bench/mutex"+resource)
	switch err := m.TryLock(ctx); {
	case errors.Is(err, concurrency.ErrLocked):
		return "", DeniedBusy, nil
	case err != nil:
		return "", DeniedOther, fmt.Errorf("klock-bench: etcd TryLock: %w", err)
	}
	c.held[resource] = m
	return resource, Granted, nil
}

func (c *etcdMutexClient) Release(ctx context.Context, resource, _ string) error {
	m := c.held[resource]
	if m == nil {
		return fmt.Errorf("klock-bench: etcd mutex on %s is not held", resource)
	}
	delete(c.held, resource)
	if err := m.Unlock(ctx); err != nil {
		return fmt.Errorf("klock-bench: etcd Unlock: %w", err)
	}
	return nil
}
