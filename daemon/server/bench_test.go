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
