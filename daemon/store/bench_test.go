package store

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klockd/klock/daemon/engine"
)

// buildLeases fills a fresh state directory with n active leases (held by
// 100 agents), in the log only or, with snapshot, compacted into a snapshot.
func buildLeases(b *testing.B, n int, snapshot bool) string {
	b.Helper()
	dir := b.TempDir()
	w := newWorld(b, dir, Options{Fsync: FsyncNever, CompactMinBytes: -1})
	const agents = 100
	for a := range agents {
		w.register(fmt.Sprintf("agent-%d", a), int64(a+1))
	}
	const batch = 1000
	for i := 0; i < n; i += batch {
		w.must(func(e *engine.Engine, now int64) error {
			for j := i; j < min(i+batch, n); j++ {
				res, err := e.Acquire(now, root, engine.AcquireRequest{
					AgentID: fmt.Sprintf("agent-%d", j%agents), SessionID: "s", TTL: 3_600_000,
					Idem:    fmt.Sprintf("idem-%d", j),
					Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/src/pkg%d/file%d.go", j%500, j), Predicate: "MUTATES"}},
				})
				if err != nil || !res.Granted {
					return fmt.Errorf("acquire %d: %v %+v", j, err, res.Denial)
				}
			}
			return nil
		})
	}
	if snapshot {
		if err := w.st.Compact(); err != nil {
			b.Fatal(err)
		}
	}
	w.close()
	return dir
}

// BenchmarkRecover100k measures recovery of 100,000 leases (target < 1 s),
// from a log of 100,000 grant records and from a snapshot.
func BenchmarkRecover100k(b *testing.B) {
	for _, snap := range []bool{false, true} {
		name := "log"
		if snap {
			name = "snapshot"
		}
		b.Run(name, func(b *testing.B) {
			dir := buildLeases(b, 100_000, snap)
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			var cpu time.Duration
			b.ResetTimer()
			for b.Loop() {
				before := cpuTime()
				st, err := Open(dir, Options{Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				eng := engine.New(engine.Config{Journal: true})
				info, err := st.Recover(eng)
				if err != nil {
					b.Fatal(err)
				}
				if info.Leases != 100_000 {
					b.Fatalf("recovered %d leases; want 100000", info.Leases)
				}
				b.StopTimer()
				cpu += cpuTime() - before
				st.Close()
				b.StartTimer()
			}
			// CPU time (user + system, all threads) is steadier than wall
			// time on a shared machine.
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu_ms/op")
		})
	}
}

// cpuTime returns the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAppendWait measures one Append + Wait (one record, as for one
// acquire) from 1 and 64 goroutines in each fsync mode: group commit shows
// as the 64-goroutine figure beating the 1-goroutine one per operation.
func BenchmarkAppendWait(b *testing.B) {
	rec := []engine.Record{{Kind: engine.RecGrant, Time: baseTime, Idem: "k", Leases: []engine.Lease{{
		ID: "7f0c1b8e-0000-4000-8000-000000000001", AgentID: "agent", SessionID: "s", Resource: "FILE:/src/main.go",
		Predicate: engine.Mutates, AcquiredAt: baseTime, ExpiresAt: baseTime + 60_000, TTL: 60_000, Fence: 1,
	}}}}
	for _, mode := range []FsyncMode{FsyncNever, FsyncEverySec, FsyncAlways} {
		for _, g := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", mode, g), func(b *testing.B) {
				st, err := Open(b.TempDir(), Options{Fsync: mode, CompactMinBytes: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				if _, err := st.Recover(engine.New(engine.Config{Journal: true})); err != nil {
					b.Fatal(err)
				}
				st.Start()
				var mu sync.Mutex // the engine mutex Append runs under
				var left atomic.Int64
				left.Store(int64(b.N))
				var wg sync.WaitGroup
				b.ResetTimer()
				for range g {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for left.Add(-1) >= 0 {
							mu.Lock()
							seq := st.Append(rec)
							mu.Unlock()
							if err := st.Wait(seq); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				st.mu.Lock()
				if st.writes > 0 {
					b.ReportMetric(float64(b.N)/float64(st.writes), "ops/write")
				}
				st.mu.Unlock()
			})
		}
	}
}

// BenchmarkCompact100k measures one compaction at 100,000 leases: the
// background rebuild from snapshot + log and the snapshot write. Serving is
// not paused for any of it (the rotation is a few pointer swaps under s.mu).
func BenchmarkCompact100k(b *testing.B) {
	dir := buildLeases(b, 100_000, true)
	st, err := Open(dir, Options{Fsync: FsyncNever, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Recover(engine.New(engine.Config{Journal: true})); err != nil {
		b.Fatal(err)
	}
	st.Start()
	b.ResetTimer()
	for b.Loop() {
		if err := st.Compact(); err != nil {
			b.Fatal(err)
		}
	}
}
