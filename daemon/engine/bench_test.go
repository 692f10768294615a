package engine

import (
	"fmt"
	"runtime"
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
func BenchmarkAcquireRelease(b *testing.B) { benchAcquireRelease(b, nil) }

// BenchmarkAcquireReleaseBound is BenchmarkAcquireRelease with the lease
// bound to a process, as clients bind by default (the other leases are
// not bound): what the process table costs an acquire and a release.
func BenchmarkAcquireReleaseBound(b *testing.B) {
	benchAcquireRelease(b, &Process{PID: 4242, Boot: 1, Start: 100})
}

// BenchmarkAcquireReleaseClient is BenchmarkAcquireReleaseBound as
// clientlib sends it (what each klock-bench worker's uncontended loop
// does): bound, and with a fresh idempotency key on every acquire.
func BenchmarkAcquireReleaseClient(b *testing.B) {
	keys := make([]string, 1024) // the client's keys: a prefix and a counter
	for i := range keys {
		keys[i] = "k1a2b3c4d5e6f7g8-" + strconv.FormatUint(uint64(i), 36)
	}
	benchAcquireRelease(b, &Process{PID: 4242, Boot: 1, Start: 100}, keys...)
}

// benchAcquireRelease runs the acquire+release loop bound to bind, with
// the idempotency keys idem in turn (none without).
func benchAcquireRelease(b *testing.B, bind *Process, idem ...string) {
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
			req.Bind = bind
			cpu := startCPU(b)
			for i := 0; i < b.N; i++ {
				if len(idem) > 0 {
					req.Idem = idem[i%len(idem)]
				}
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

// BenchmarkSubtreeVerdict measures one verdict on a subtree key at depth
// d with n leases of another agent below it (issue 14: it must not grow
// with n). die: a younger agent asks MUTATES and is refused by the older
// holder below (one Acquire, nothing changes). grant: it asks CONSUMES
// over CONSUMES leases, is granted and releases (Acquire plus Release).
func BenchmarkSubtreeVerdict(b *testing.B) {
	for _, verdict := range []string{"die", "grant"} {
		for _, depth := range []int{1, 4, 8} {
			for _, n := range []int{1, 1000, 100000} {
				b.Run(fmt.Sprintf("%s/depth=%d/below=%d", verdict, depth, n), func(b *testing.B) {
					benchSubtree(b, verdict, depth, n)
				})
			}
		}
	}
}

func benchSubtree(b *testing.B, verdict string, depth, n int) {
	e := New(Config{})
	c := Caller{UID: 1000}
	if _, err := e.Register(t0, c, "holder", 100, true); err != nil {
		b.Fatal(err)
	}
	if _, err := e.Register(t0, c, "asker", 200, true); err != nil {
		b.Fatal(err)
	}
	sub := "/"
	for i := 1; i <= depth; i++ {
		sub += "d" + strconv.Itoa(i) + "/"
	}
	pred := "MUTATES"
	if verdict == "grant" {
		pred = "CONSUMES"
	}
	// The leases below spread over 100 directories, two levels down.
	for i := 0; i < n; i++ {
		p := sub + "g" + strconv.Itoa(i%100) + "/f" + strconv.Itoa(i)
		r, err := e.Acquire(t0, c, req1("holder", "s", "FILE", p, pred, 3_600_000))
		if err != nil || !r.Granted {
			b.Fatal(err, r.Denial)
		}
	}
	req := req1("asker", "s", "FILE", sub, pred, 60_000)
	cpu := startCPU(b)
	for i := 0; i < b.N; i++ {
		r, err := e.Acquire(t0, c, req)
		if err != nil {
			b.Fatal(err)
		}
		if verdict == "die" {
			if r.Granted || r.Denial.HeldBy != "holder" {
				b.Fatal(r)
			}
			continue
		}
		if !r.Granted {
			b.Fatal(r.Denial)
		}
		if ok, _, _ := e.Release(t0, c, r.Leases[0].ID); !ok {
			b.Fatal("not released")
		}
	}
	cpu.stop(b)
}

// BenchmarkLeaseMemory reports the heap one held lease costs ("B/lease"),
// with 100,000 leases of one agent: flat, all in one directory, and deep,
// five levels down in 1,000 directories; client is flat as klock-bench's
// many-leases holder takes them with clientlib's defaults: acquire_many
// batches of 64, each under an idempotency key, bound to the process;
// single is client with each lease taken alone, as clientlib's Acquire
// takes one (its own idempotency key, bound).
func BenchmarkLeaseMemory(b *testing.B) {
	const n = 100_000
	for _, shape := range []string{"flat", "deep", "client", "single"} {
		b.Run(shape, func(b *testing.B) {
			var perLease float64
			for i := 0; i < b.N; i++ {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				e := New(Config{})
				c := Caller{UID: 1000}
				if _, err := e.Register(t0, c, "a", 1, true); err != nil {
					b.Fatal(err)
				}
				if shape == "client" {
					fillClient(b, e, c, n)
				}
				for j := 0; j < n && shape != "client"; j++ {
					p := "/other/" + strconv.Itoa(j)
					if shape == "deep" {
						p = "/w/repo/src/pkg" + strconv.Itoa(j%1000) + "/x/f" + strconv.Itoa(j)
					}
					req := req1("a", "s", "FILE", p, "MUTATES", 3_600_000)
					if shape == "single" {
						req.Idem, req.Bind = "0123456789abcdef0123456789abcdef-"+strconv.FormatInt(int64(j), 36), &benchProc
					}
					if r, err := e.Acquire(t0, c, req); err != nil || !r.Granted {
						b.Fatal(err)
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perLease = float64(after.HeapAlloc-before.HeapAlloc) / n
				runtime.KeepAlive(e)
			}
			b.ReportMetric(perLease, "B/lease")
		})
	}
}

// BenchmarkEndSessionStep measures one step of ending a session of 100,000
// leases (1,000 leases released, oldest first) in an engine holding
// 1,000,000 more, each released lease with a parked waiter that is granted:
// the longest the daemon holds its lock for an end_session.
func BenchmarkEndSessionStep(b *testing.B) {
	for _, waiters := range []bool{false, true} {
		b.Run(fmt.Sprintf("waiters=%v", waiters), func(b *testing.B) {
			const session, step = 100_000, 1000
			e := New(Config{Journal: true})
			c := Caller{UID: 1000}
			for _, a := range []struct {
				id   string
				prio int64
			}{{"waiter", 1}, {"bulk", 2}, {"ender", 3}} {
				if _, err := e.Register(t0, c, a.id, a.prio, true); err != nil {
					b.Fatal(err)
				}
			}
			fillEngine(b, e, "bulk", "held", "/held/", 1_000_000)
			round := 0
			big := "big0"
			start := func() {
				round++
				big = "big" + strconv.Itoa(round)
				fillEngine(b, e, "ender", big, "/big/", session)
				if waiters {
					for i := range session {
						req := req1("waiter", "w"+strconv.Itoa(round), "FILE", "/big/"+strconv.Itoa(i), "MUTATES", 3_600_000)
						req.WaitTimeout = 3_600_000
						if r, err := e.Acquire(t0, c, req); err != nil || !r.Queued {
							b.Fatal(err, r.Denial)
						}
					}
				}
				e.Records()
			}
			start()
			steps := 0
			cpu := startCPU(b)
			for i := 0; i < b.N; i++ {
				_, wake, more, err := e.EndSessionStep(t0, c, "ender", big, step)
				if err != nil {
					b.Fatal(err)
				}
				_ = wake
				e.Records()
				steps++
				if !more {
					b.StopTimer()
					// The waiters now hold the leases: end their session too.
					if _, _, err := e.EndSession(t0, c, "waiter", "w"+strconv.Itoa(round)); err != nil {
						b.Fatal(err)
					}
					e.Records()
					start()
					b.StartTimer()
				}
			}
			cpu.stop(b)
		})
	}
}

// fillEngine grants n leases to agent in session on prefix0...
func fillEngine(b *testing.B, e *Engine, agent, session, prefix string, n int) {
	c := Caller{UID: 1000}
	for i := 0; i < n; i++ {
		if r, err := e.Acquire(t0, c, req1(agent, session, "FILE", prefix+strconv.Itoa(i), "MUTATES", 3_600_000)); err != nil || !r.Granted {
			b.Fatal(err, r.Denial)
		}
	}
	e.Records()
}

// fillClient acquires n leases on /held/0../held/(n-1) for agent "a" as
// klock-bench's many-leases holder does with clientlib: acquire_many
// batches of 64, an idempotency key per batch, bound to one process.
// benchProc is the process the client shapes' leases are bound to.
var benchProc = Process{PID: 4242, Boot: 1, Start: 99}

func fillClient(b *testing.B, e *Engine, c Caller, n int) {
	const batch = 64
	proc := benchProc
	for start := 0; start < n; start += batch {
		req := AcquireRequest{AgentID: "a", SessionID: "held", TTL: 3_600_000,
			Idem: "0123456789abcdef0123456789abcdef-" + strconv.FormatInt(int64(start/batch), 36), Bind: &proc}
		for i := start; i < min(n, start+batch); i++ {
			req.Intents = append(req.Intents, Intent{ResourceType: "FILE", ResourcePath: "/held/" + strconv.Itoa(i), Predicate: "MUTATES"})
		}
		if r, err := e.AcquireMany(t0, c, req); err != nil || !r.Granted {
			b.Fatal(err, r.Denial)
		}
	}
}

// BenchmarkAcquireReleaseAgents is BenchmarkAcquireReleaseClient in the
// shape of klock-bench's klock-conn uncontended workload at W=64: 64
// agents (priorities 1..64), each in its own session "bench", bound to
// the bench process, acquiring and releasing its own resource
// /bench/uncontended/w<i> with a fresh idempotency key each time. Each
// agent holds its lease while the next 32 agents acquire, as the bench's
// workers hold theirs about half the time, so the summaries above those
// resources list 64 agents each, half of them holding. One op is one
// acquire plus one release; the clock advances a millisecond every 64 ops.
func BenchmarkAcquireReleaseAgents(b *testing.B) {
	const agents, holding = 64, 32
	e := New(Config{})
	c := Caller{UID: 1000}
	proc := Process{PID: 4242, Boot: 1, Start: 100}
	reqs := make([]AcquireRequest, agents)
	for i := range reqs {
		id := "w" + strconv.Itoa(i)
		if _, err := e.Register(t0, c, id, int64(i+1), true); err != nil {
			b.Fatal(err)
		}
		reqs[i] = req1(id, "bench", "FILE", "/bench/uncontended/"+id, "MUTATES", 30_000)
		reqs[i].Bind = &proc
	}
	keys := make([]string, 4096) // the clients' keys: a prefix and a counter
	for i := range keys {
		keys[i] = "k1a2b3c4d5e6f7g8-" + strconv.FormatUint(uint64(i), 36)
	}
	held := make([]string, agents)
	step := func(i int) {
		now := t0 + int64(i/agents)
		k := i % agents
		req := &reqs[k]
		req.Idem = keys[i%len(keys)]
		r, err := e.Acquire(now, c, *req)
		if err != nil || !r.Granted {
			b.Fatal(err, r.Denial)
		}
		held[k] = r.Leases[0].ID
		k = (k + agents - holding) % agents
		if held[k] != "" {
			if ok, _, _ := e.Release(now, c, held[k]); !ok {
				b.Fatal("not released")
			}
			held[k] = ""
		}
	}
	for i := range holding {
		step(i)
	}
	cpu := startCPU(b)
	for i := 0; i < b.N; i++ {
		step(holding + i)
	}
	cpu.stop(b)
}
