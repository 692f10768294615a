package clientlib

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// BenchmarkRoundTrip compares one request/answer through the Client with the
// same request written and read by hand on a raw socket, against the same
// in-process fake daemon. With one goroutine the Client reads its own answer
// from the socket (no hand-off to another goroutine), so client/1 should cost
// about what raw/1 costs; parallel shows pipelining with coalesced writes.
//
// With KLOCK_BENCH_SOCKET set, both run against the klockd on that socket
// instead, which isolates the client's own cost on the real daemon.
func BenchmarkRoundTrip(b *testing.B) {
	socket := os.Getenv("KLOCK_BENCH_SOCKET")
	if socket == "" {
		socket = newFakeDaemon(b).path
	}
	ctx := context.Background()

	b.Run("raw/1", func(b *testing.B) {
		nc, err := net.Dial("unix", socket)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		br := bufio.NewReader(nc)
		var wbuf, rbuf []byte
		var resp protocol.Response
		var res protocol.CountResult
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			wbuf, _ = protocol.AppendRequest(wbuf[:0], uint64(i+1), protocol.OpActiveLeaseCount, nil)
			if _, err := nc.Write(wbuf); err != nil {
				b.Fatal(err)
			}
			body, err := protocol.ReadFrame(br, rbuf, protocol.DefaultMaxFrame)
			if err != nil {
				b.Fatal(err)
			}
			rbuf = body[:0]
			if err := protocol.DecodeResponse(body, &resp); err != nil {
				b.Fatal(err)
			}
			if err := protocol.DecodeResult(resp.Result, &res); err != nil {
				b.Fatal(err)
			}
		}
	})

	c, err := Dial(ctx, Options{Socket: socket})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	b.Run("client/1", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.ActiveLeaseCount(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("client/1-deadline", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(ctx, time.Hour)
		defer cancel()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.ActiveLeaseCount(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pair/1", func(b *testing.B) {
		if err := c.RegisterAgent(ctx, "bench", 1); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			r, err := c.AcquireLease(ctx, "bench", "s", "FILE", "/bench", "MUTATES", time.Minute)
			if err != nil || !r.Success {
				b.Fatal(r, err)
			}
			if _, err := c.ReleaseLease(ctx, r.LeaseID); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, w := range []int{8, 64} {
		b.Run(fmt.Sprintf("client/%d", w), func(b *testing.B) {
			b.SetParallelism(max(1, w/runtime.GOMAXPROCS(0)))
			b.ReportAllocs()
			writes := c.writes.Load()
			defer func() { b.ReportMetric(float64(b.N)/float64(c.writes.Load()-writes), "req/write") }()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.ActiveLeaseCount(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
