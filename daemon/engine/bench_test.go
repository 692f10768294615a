package engine

import (
	"fmt"
	"strconv"
	"syscall"
	"testing"
)

// cpuMeter reports, besides wall-clock ns/op, the process CPU time per op
// ("cpu-ns/op", GC included): on a machine shared with other work the wall
// clock counts the time other processes run, CPU time does not.
type cpuMeter struct{ start int64 }

func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func startCPU(b *testing.B) *cpuMeter {
	b.ReportAllocs()
	b.ResetTimer()
	return &cpuMeter{start: processCPU()}
}

func (m *cpuMeter) stop(b *testing.B) {
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-m.start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkAcquireRelease measures one acquire plus one release with n
// other active leases on other resources: O(1) means flat in n.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, n := range []int{1, 1000, 100000} {
		b.Run(fmt.Sprintf("leases=%d", n), func(b *testing.B) {
			e := New(Config{})
			c := Caller{UID: 1000}
			if _, err := e.Register(t0, c, "bench", 100, true); err != nil {
				b.Fatal(err)
			}
			if _, err := e.Register(t0, c, "other", 200, true); err != nil {
				b.Fatal(err)
			}
			for i := 0; i < n; i++ {
				r, err := e.Acquire(t0, c, req1("other", "s", "FILE", "/other/"+strconv.Itoa(i), "MUTATES", 3_600_000))
				if err != nil || !r.Granted {
					b.Fatal(err, r.Denial)
				}
			}
			req := req1("bench", "s", "FILE", "/src/auth.ts", "MUTATES", 60_000)
			cpu := startCPU(b)
			for i := 0; i < b.N; i++ {
				r, err := e.Acquire(t0, c, req)
				if err != nil || !r.Granted {
					b.Fatal(err, r.Denial)
				}
				if ok, _, _ := e.Release(t0, c, r.Leases[0].ID); !ok {
					b.Fatal("not released")
				}
			}
			cpu.stop(b)
		})
	}
}

// BenchmarkAcquireContended: 16 agents take turns on 4 resources; each op
// is one acquire (granted or denied) and, when granted, one release.
func BenchmarkAcquireContended(b *testing.B) {
	e := New(Config{})
	c := Caller{UID: 1000}
	var reqs []AcquireRequest
	for i := 0; i < 16; i++ {
		id := "agent" + strconv.Itoa(i)
		if _, err := e.Register(t0, c, id, int64(100+i), true); err != nil {
			b.Fatal(err)
		}
		reqs = append(reqs, req1(id, "s", "FILE", "/r"+strconv.Itoa(i%4), "MUTATES", 60_000))
	}
	held := make([]string, 16)
	cpu := startCPU(b)
	for i := 0; i < b.N; i++ {
		k := i % 16
		if held[k] != "" {
			e.Release(t0, c, held[k])
			held[k] = ""
			continue
		}
		r, err := e.Acquire(t0, c, reqs[k])
		if err != nil {
			b.Fatal(err)
		}
		if r.Granted {
			held[k] = r.Leases[0].ID
		}
	}
	cpu.stop(b)
}
