package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 1000; i++ {
		lat = append(lat, time.Duration(i))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0, 1}} {
		if got := percentile(lat, tc.q); got != tc.want {
			t.Errorf("percentile(1..1000, %v) = %v; want %v", tc.q, got, tc.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil, 0.5) = %v; want 0", got)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{{[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{7}, 7}, {nil, 0}} {
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v; want %v", tc.xs, got, tc.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-short", "-backends", "echo, redis"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.duration != time.Second || len(cfg.workers) != 2 || cfg.leases != 2000 || cfg.warmup != 100*time.Millisecond {
		t.Errorf("-short gave d=%v w=%v leases=%d warmup=%v; want 1s [1 8] 2000 100ms", cfg.duration, cfg.workers, cfg.leases, cfg.warmup)
	}
	if strings.Join(cfg.backends, ",") != "echo,redis" {
		t.Errorf("backends = %q; want echo,redis", cfg.backends)
	}
	cfg, err = parseFlags([]string{"-short", "-d", "3s", "-w", "64"}, io.Discard)
	if err != nil || cfg.duration != 3*time.Second || len(cfg.workers) != 1 || cfg.workers[0] != 64 {
		t.Errorf("explicit flags under -short = %+v, %v; want d=3s w=[64]", cfg, err)
	}
	cfg, err = parseFlags([]string{"-backends", "echo,klock-conn,klock-etcd", "-compare", "old=/tmp/klockd-old"}, io.Discard)
	if err != nil || strings.Join(cfg.backends, ",") != "echo,klock-conn,klock-conn-old,klock-etcd" {
		t.Errorf("-compare old=...: backends = %q, %v; want echo,klock-conn,klock-conn-old,klock-etcd", cfg.backends, err)
	}
	if backendMaker(cfg, "klock-conn-old") == nil || backendMaker(cfg, "echo-old") != nil {
		t.Errorf("backendMaker: want a maker for klock-conn-old and none for echo-old")
	}
	for _, bad := range [][]string{{"-backends", "nope"}, {"-workloads", "x"}, {"-w", "0"}, {"-d", "0s"}, {"stray"},
		{"-compare", "/tmp/klockd"}, {"-compare", "=/tmp/klockd"}, {"-compare", "old="}, {"-stall-by", "kill"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) = nil error; want an error", bad)
		}
	}
}

// TestTargets checks that the targets are medians of per-repetition ratios
// and are judged against the bounds.
func TestTargets(t *testing.T) {
	cfg := config{backends: []string{"echo", "redis", "klock", "klock-conn"}, workloads: []string{Uncontended, ManyLeases}, workers: []int{1, 64}}
	r := &Results{Reps: 3, Leases: 100}
	add := func(b, wl string, w, rep int, thr, p50, p99 float64) {
		r.Cells = append(r.Cells, Cell{Backend: b, Workload: wl, Workers: w, Rep: rep, PairsPerSec: thr, P50us: p50, P99us: p99})
	}
	for rep := 1; rep <= 3; rep++ {
		add("echo", Uncontended, 1, rep, 1000, 100, 200)
		add("redis", Uncontended, 1, rep, 1000, 100, 200)
		add("klock", Uncontended, 1, rep, []float64{1200, 900, 1150}[rep-1], 105, 200)
		add("echo", Uncontended, 64, rep, 2000, 100, 200)
		add("redis", Uncontended, 64, rep, 1000, 100, 400)
		add("klock", Uncontended, 64, rep, 1900, 100, 300)
		add("klock", ManyLeases, 1, rep, 1000, 100, 200)
		add("klock", ManyLeases, 64, rep, 1900, 100, 300)
		add("klock-conn", Uncontended, 64, rep, 1850, 100, 300)
	}
	r.summarize(cfg)
	want := map[string]struct {
		ratio float64
		pass  bool
	}{
		"klock W=1 uncontended: p50 <= 1.1 x echo":          {1.05, true},
		"klock W=1 uncontended: throughput >= 1.1 x redis":  {1.15, true},
		"klock W=64 uncontended: throughput >= 0.9 x echo":  {0.95, true},
		"klock W=64 uncontended: throughput >= 1.2 x redis": {1.9, true},
		"klock W=64 uncontended: p99 <= redis p99":          {0.75, true},
		// issue 18's bar for a connection per worker is higher: 0.925
		// passes 0.9 and misses 0.95.
		"klock-conn W=64 uncontended: throughput >= 0.95 x echo": {0.925, false},
	}
	seen := 0
	for _, tg := range r.Targets {
		w, ok := want[tg.Subject+" "+tg.Goal]
		if !ok {
			continue
		}
		seen++
		if tg.Ratio == nil || tg.Pass == nil || abs(*tg.Ratio-w.ratio) > 1e-9 || *tg.Pass != w.pass {
			t.Errorf("target %q = %v, %v; want %v, %v", tg.Goal, deref(tg.Ratio), tg.Pass, w.ratio, w.pass)
		}
	}
	if seen != len(want) {
		t.Errorf("found %d of %d targets in %+v", seen, len(want), r.Targets)
	}
	var sb strings.Builder
	r.WriteTable(&sb)
	if !strings.Contains(sb.String(), "PASS") || !strings.Contains(sb.String(), "uncontended") {
		t.Errorf("table lacks rows or verdicts:\n%s", sb.String())
	}
}

// TestDurable: a -compare twin is judged as its base back end (the memory
// target is 400 B for a durable one, 300 B in memory).
func TestDurable(t *testing.T) {
	for b, want := range map[string]bool{
		"klock-everysec": true, "klock-everysec-after": true, "klock-conn-everysec": true, "klock-conn-everysec-old": true,
		"klock": false, "klock-after": false, "klock-conn": false, "klock-conn-old": false, "redis": false,
	} {
		if durable(b) != want {
			t.Errorf("durable(%q) = %v; want %v", b, !want, want)
		}
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

func deref(x *float64) float64 {
	if x == nil {
		return -1
	}
	return *x
}

// TestMemoryAndStallTargets checks the memory and stall bounds:
// durable back ends are held to 400 B per lease, the others to 300, the
// release target is judged only for a large release, and the stall target
// is the median over repetitions of the longest stats call.
func TestMemoryAndStallTargets(t *testing.T) {
	cfg := config{backends: []string{"klock", "klock-everysec"}, workloads: []string{Stall}, workers: []int{1}}
	r := &Results{Reps: 3, Leases: 1_000_000, Session: 100_000}
	for rep := 1; rep <= 3; rep++ {
		r.Cells = append(r.Cells, Cell{Backend: "klock", Workload: Stall, Workers: 1, Rep: rep, PairsPerSec: 100, P50us: 50, P99us: 90,
			MaxUs: []float64{20_000, 60_000, 40_000}[rep-1]})
	}
	r.Memory = []MemoryRow{
		{Backend: "klock", Leases: 1_000_000, BytesPerLease: 290, AfterRatio: 0.4, RSSWait: "20s"},
		{Backend: "klock-everysec", Leases: 1_000_000, BytesPerLease: 390, AfterRatio: 0.6, RSSWait: "20s"},
		{Backend: "klock-conn", Leases: 2000, BytesPerLease: 13000, AfterRatio: 1},
	}
	r.summarize(cfg)
	type verdict struct {
		ratio float64
		pass  bool
	}
	want := map[string]verdict{
		"klock stall (1000000 leases paged, a session of 100000 ended): longest stats <= 50 ms (ratio: ms/50)": {0.8, true},
		"klock RSS per lease at 1000000 leases in memory <= 300 B (ratio: B/300)":                              {290.0 / 300, true},
		"klock RSS 20s after releasing 1000000 leases <= 0.5 x held":                                           {0.4, true},
		"klock-everysec RSS per lease at 1000000 leases durable <= 400 B (ratio: B/400)":                       {390.0 / 400, true},
		"klock-everysec RSS 20s after releasing 1000000 leases <= 0.5 x held":                                  {0.6, false},
	}
	got := map[string]verdict{}
	for _, tg := range r.Targets {
		if tg.Ratio != nil && tg.Pass != nil {
			got[tg.Subject+" "+tg.Goal] = verdict{*tg.Ratio, *tg.Pass}
		}
	}
	for goal, w := range want {
		g, ok := got[goal]
		if !ok || abs(g.ratio-w.ratio) > 1e-9 || g.pass != w.pass {
			t.Errorf("target %q = %+v (found %v); want %+v", goal, g, ok, w)
		}
	}
	for goal := range got {
		if strings.Contains(goal, "klock-conn") {
			t.Errorf("target %q judged a release of 2000 leases and a back end outside the run", goal)
		}
	}
}
