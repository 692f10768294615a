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
	"testing"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// BenchmarkAcquireRelease measures acquire+release pairs through the
// server over real Unix sockets, with 1 and 64 connections, each doing one
// round trip at a time on its own resource.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, conns := range []int{1, 64} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "k.sock")
			ln, err := Listen(ListenConfig{Path: path})
			if err != nil {
				b.Fatal(err)
			}
			srv := New(Config{Engine: engine.New(engine.Config{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			go srv.Serve(context.Background(), ln)
			defer srv.Close()

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
		})
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
	for i := 0; i < b.N; i++ {
		c.out = c.out[:0]
		s.handle(c, acq)
		protocol.DecodeResponse(c.out[protocol.HeaderSize:], &resp)
		if err := protocol.DecodeResult(resp.Result, &g); err != nil || !g.Success {
			b.Fatalf("acquire answer %+v: %v", resp, err)
		}
		rel.LeaseID = g.LeaseID
		relBody, _ := protocol.AppendRequest(nil, 3, protocol.OpRelease, rel)
		c.out = c.out[:0]
		s.handle(c, relBody[protocol.HeaderSize:])
	}
}
