package tests

import (
	"bufio"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// cutProxy sits between a client and klockd. When armed, it swallows the
// daemon's answer to the next granted acquire and cuts the connection: the
// daemon has applied the acquire, the client never hears of it and must
// resend it on a new connection.
type cutProxy struct {
	path   string
	daemon string
	armed  atomic.Bool

	mu        sync.Mutex // guards the fields that follow
	swallowed []string   // lease ids of the grants swallowed
	conns     int        // connections accepted
}

func startCutProxy(t *testing.T, daemonSocket string) *cutProxy {
	dir, err := os.MkdirTemp("", "klkp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &cutProxy{path: filepath.Join(dir, "proxy.sock"), daemon: daemonSocket}
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			cc, err := ln.Accept()
			if err != nil {
				return
			}
			dc, err := net.Dial("unix", p.daemon)
			if err != nil {
				cc.Close()
				continue
			}
			p.mu.Lock()
			p.conns++
			p.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(dc, cc); dc.Close() }()
			go func() { defer wg.Done(); p.answers(dc, cc); cc.Close(); dc.Close() }()
		}
	}()
	return p
}

// answers forwards the daemon's answers to the client frame by frame.
func (p *cutProxy) answers(dc, cc net.Conn) {
	br := bufio.NewReader(dc)
	var buf []byte
	for {
		body, err := protocol.ReadFrame(br, buf, protocol.DefaultMaxFrame)
		if err != nil {
			return
		}
		var resp protocol.Response
		var res protocol.AcquireResult
		if p.armed.Load() && protocol.DecodeResponse(body, &resp) == nil && resp.OK &&
			protocol.DecodeResult(resp.Result, &res) == nil && res.Success && p.armed.CompareAndSwap(true, false) {
			p.mu.Lock()
			if res.LeaseID != "" {
				p.swallowed = append(p.swallowed, res.LeaseID)
			}
			for _, g := range res.Leases {
				p.swallowed = append(p.swallowed, g.LeaseID)
			}
			p.mu.Unlock()
			return // cut: the grant never reaches the client
		}
		if _, err := cc.Write(protocol.AppendFrame(nil, body)); err != nil {
			return
		}
	}
}

func (p *cutProxy) take() (ids []string, conns int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids, p.swallowed = p.swallowed, nil
	return ids, p.conns
}

// TestClientResentAcquireReturnsSameLease: an acquire applied by the daemon
// whose answer is lost with the connection is resent by the client with its
// idempotency key, and returns the same lease, never a second one — for a
// plain AcquireOnce, a blocking Acquire with keep-alive, and AcquireMany.
func TestClientResentAcquireReturnsSameLease(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	p := startCutProxy(t, d.Socket)
	ctx := testCtx(t)
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: p.path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.RegisterAgent(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	active := 0
	check := func(what string, got []string) {
		t.Helper()
		ids, conns := p.take()
		if len(ids) == 0 || len(ids) != len(got) {
			t.Fatalf("%s: swallowed grants %v, client got %v; want the same non-empty set", what, ids, got)
		}
		for i := range ids {
			if ids[i] != got[i] {
				t.Errorf("%s: lease %d is %s after the resend; want %s (the swallowed grant)", what, i, got[i], ids[i])
			}
		}
		if conns < 2 {
			t.Errorf("%s: %d connections; want a reconnect", what, conns)
		}
		active += len(got)
		if n, err := c.ActiveLeaseCount(ctx); err != nil || n != active {
			t.Errorf("%s: ActiveLeaseCount = %d, %v; want %d (no second lease)", what, n, err, active)
		}
	}

	p.armed.Store(true)
	r, err := c.AcquireOnce(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s", Intents: fileIntent("/once", "MUTATES"), TTL: time.Minute,
	})
	if err != nil || !r.Success {
		t.Fatalf("AcquireOnce across a cut = %+v, %v; want a grant", r, err)
	}
	check("AcquireOnce", []string{r.LeaseID})

	p.armed.Store(true)
	l, err := c.Acquire(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s", Intents: fileIntent("/kept", "MUTATES"), TTL: time.Minute,
	})
	if err != nil {
		t.Fatalf("Acquire across a cut = %v", err)
	}
	check("Acquire", []string{l.ID()})

	p.armed.Store(true)
	m, err := c.AcquireMany(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s", TTL: time.Minute, Intents: []clientlib.Intent{
			{ResourceType: "FILE", ResourcePath: "/m/1", Predicate: "MUTATES"},
			{ResourceType: "CONFIG_KEY", ResourcePath: "m.2", Predicate: "PROVIDES"},
			{ResourceType: "SYMBOL", ResourcePath: "m3", Predicate: "CONSUMES"},
		},
	})
	if err != nil || !m.Success {
		t.Fatalf("AcquireMany across a cut = %+v, %v; want a grant", m, err)
	}
	var ids []string
	for _, g := range m.Leases {
		ids = append(ids, g.LeaseID)
	}
	check("AcquireMany", ids)

	if err := l.Err(); err != nil {
		t.Errorf("kept lease Err = %v; want nil", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Errorf("Release = %v", err)
	}
}
