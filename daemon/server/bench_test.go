package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// BenchmarkAcquireRelease measures acquire+release pairs through the
// server over real Unix sockets, with 1 and 64 connections, each doing one
// round trip at a time on its own resource; the ",watch=all" variants run
// the same with one more connection watching every event, and count until
// the watcher has read them all (issue 16: at most 1.2 times the time
// without).
func BenchmarkAcquireRelease(b *testing.B) {
	for _, watch := range []bool{false, true} {
		for _, conns := range []int{1, 64} {
			name := fmt.Sprintf("conns=%d", conns)
			if watch {
				name += ",watch=all"
			}
			b.Run(name, func(b *testing.B) { benchAcquireRelease(b, conns, watch) })
		}
	}
}

func benchAcquireRelease(b *testing.B, conns int, watch bool) {
	path := filepath.Join(b.TempDir(), "k.sock")
	ln, err := Listen(ListenConfig{Path: path})
	if err != nil {
		b.Fatal(err)
	}
	// The watcher's buffer is large enough that it never overflows here:
	// the figure is the cost of delivering every event. (With the default
	// 1024, a watcher starved of CPU by 64 busy clients is cut off, as
	// designed.)
	srv := New(Config{Engine: engine.New(engine.Config{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), WatchBuffer: 1 << 16})
	go srv.Serve(context.Background(), ln)
	defer srv.Close()
	var waitWatcher func(want int)
	if watch {
		waitWatcher = benchWatcher(b, path)
	}

	var wg sync.WaitGroup
	per := b.N/conns + 1
	b.ResetTimer()
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := benchClient(path, w, per); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	if watch {
		waitWatcher(2 * conns * per) // an acquire and a release event per pair
	}
}

// benchWatcher opens a watch on everything at path and reads its events in
// a goroutine, decoding each as a client would. wait blocks until want
// events have been read, then closes the watch.
func benchWatcher(b *testing.B, path string) (wait func(want int)) {
	nc, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	frame, _ := protocol.AppendRequest(nil, 1, protocol.OpWatch, nil)
	if _, err := nc.Write(frame); err != nil {
		b.Fatal(err)
	}
	br := bufio.NewReader(nc)
	if _, err := protocol.ReadFrame(br, nil, protocol.DefaultMaxFrame); err != nil {
		b.Fatal(err)
	}
	var n, target atomic.Int64
	target.Store(-1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var buf []byte
		var resp protocol.Response
		var ev protocol.WatchEvent
		for {
			body, err := protocol.ReadFrame(br, buf, protocol.DefaultMaxFrame)
			if err != nil {
				return
			}
			buf = body[:0]
			if protocol.DecodeResponse(body, &resp) != nil || protocol.DecodeResult(resp.Result, &ev) != nil {
				return
			}
			if ev.Event == protocol.EventOverflow {
				b.Error("the benchmark's watcher overflowed")
				return
			}
			if n.Add(1) == target.Load() {
				return
			}
		}
	}()
	return func(want int) {
		target.Store(int64(want))
		if n.Load() >= int64(want) {
			nc.Close() // reached before the target was known
		}
		select {
		case <-done:
		case <-time.After(time.Minute):
			b.Errorf("the watcher did not read %d events within a minute", want)
		}
		nc.Close()
		if got := n.Load(); got != int64(want) {
			b.Errorf("the watcher read %d events; want %d", got, want)
		}
	}
}

func benchClient(path string, w, n int) error {
	nc, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	defer nc.Close()
	br := bufio.NewReader(nc)
	agent := fmt.Sprintf("bench-%d", w)
	roundTrip := func(id uint64, op string, a *protocol.Args, v any) error {
		frame, err := protocol.AppendRequest(nil, id, op, a)
		if err != nil {
			return err
		}
		if _, err := nc.Write(frame); err != nil {
			return err
		}
		body, err := protocol.ReadFrame(br, nil, protocol.DefaultMaxFrame)
		if err != nil {
			return err
		}
		var resp protocol.Response
		if err := protocol.DecodeResponse(body, &resp); err != nil {
			return err
		}
		if !resp.OK {
			return fmt.Errorf("%s: %s", op, resp.Error.Message)
		}
		if v == nil {
			return nil
		}
		return protocol.DecodeResult(resp.Result, v)
	}
	reg := &protocol.Args{AgentID: agent}
	reg.Set(protocol.ArgAgentID)
	if err := roundTrip(1, protocol.OpRegisterAgent, reg, nil); err != nil {
		return err
	}
	acq := acquireArgs(agent, "/bench/"+agent, 30000, 0)
	rel := &protocol.Args{}
	rel.Set(protocol.ArgLeaseID)
	var g protocol.Grant
	for i := 0; i < n; i++ {
		if err := roundTrip(uint64(2*i+2), protocol.OpAcquire, acq, &g); err != nil {
			return err
		}
		rel.LeaseID = g.LeaseID
		if err := roundTrip(uint64(2*i+3), protocol.OpRelease, rel, nil); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkHandle measures the server's own work for an acquire+release
// pair (decode, engine, encode), without the socket; the figure includes
// decoding the grant and encoding the release, as a client would.
func BenchmarkHandle(b *testing.B) {
	client, server := socketPair(b)
	defer client.Close()
	defer server.Close()
	s := New(Config{Engine: engine.New(engine.Config{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	c := newConn(s, server, Peer{})
	ra := &protocol.Args{AgentID: "a"}
	ra.Set(protocol.ArgAgentID)
	reg, _ := protocol.AppendRequest(nil, 1, protocol.OpRegisterAgent, ra)
	s.handle(c, reg[protocol.HeaderSize:])
	acq, _ := protocol.AppendRequest(nil, 2, protocol.OpAcquire, acquireArgs("a", "/bench", 30000, 0))
	acq = acq[protocol.HeaderSize:]
	var resp protocol.Response
	var g protocol.Grant
	rel := &protocol.Args{}
	rel.Set(protocol.ArgLeaseID)
	b.ReportAllocs()
	b.ResetTimer()
	// Each answer is taken as written: the output and its marks start
	// empty again, as after a flush, so neither grows with b.N.
	drain := func() { c.out, c.marks = c.out[:0], c.marks[:0] }
	for i := 0; i < b.N; i++ {
		drain()
		s.handle(c, acq)
		protocol.DecodeResponse(c.out[protocol.HeaderSize:], &resp)
		if err := protocol.DecodeResult(resp.Result, &g); err != nil || !g.Success {
			b.Fatalf("acquire answer %+v: %v", resp, err)
		}
		rel.LeaseID = g.LeaseID
		relBody, _ := protocol.AppendRequest(nil, 3, protocol.OpRelease, rel)
		drain()
		s.handle(c, relBody[protocol.HeaderSize:])
	}
}
