package server

import (
	"runtime/debug"
	"testing"
)

func TestBigDrop(t *testing.T) {
	for _, tc := range []struct {
		peak, now int
		want      bool
	}{
		{1_000_000, 0, true},
		{1_000_000, 500_000, true},
		{1_000_000, 500_001, false}, // not half
		{60_000, 0, true},
		{49_999, 0, false}, // too small to matter
		{100_000, 50_000, true},
		{0, 0, false},
	} {
		if got := bigDrop(tc.peak, tc.now); got != tc.want {
			t.Errorf("bigDrop(%d, %d) = %v; want %v", tc.peak, tc.now, got, tc.want)
		}
	}
}

// TestReclaimWaitsForTheReleaseToEnd: memory is given back once a large
// release has stopped falling, not half way through it, and a drop that
// goes on after it was given back is given back again.
func TestReclaimWaitsForTheReleaseToEnd(t *testing.T) {
	r := newReclaimer(100_000) // filled, and given back after the growth
	steps := []struct {
		held int
		want bool
	}{
		{100_000, false},
		{100_000, false},
		{40_000, false}, // an end_session half way: more than half gone, still falling
		{0, false},      // ended during the last second
		{0, true},       // settled: give back
	}
	for i, st := range steps {
		if got := r.tick(st.held); got != st.want {
			t.Fatalf("tick %d (held %d) = %v; want %v", i, st.held, got, st.want)
		}
		if st.want {
			r.gaveBack(st.held)
		}
	}
	// A slow release, under reclaimSettle a second, gives back as soon
	// as half of the peak is gone.
	r = newReclaimer(200_000)
	gave := -1
	for held := 200_000; held >= 0; held -= reclaimSettle - 1 {
		if r.tick(held) {
			gave = held
			break
		}
	}
	if gave < 0 || gave > 100_000 || gave < 100_000-reclaimSettle {
		t.Fatalf("a slow release gave back at %d held; want just under 100000", gave)
	}
	// Nothing more after that until another big drop.
	r.gaveBack(gave)
	if r.tick(gave) || r.tick(gave-10) {
		t.Fatal("gave back again with no new drop")
	}
}

func TestBigGrowth(t *testing.T) {
	for _, tc := range []struct {
		floor, now int
		want       bool
	}{
		{0, 1_000_000, true},
		{0, 50_000, true},
		{0, 49_999, false}, // too small to matter
		{500_000, 1_000_000, true},
		{500_001, 1_000_000, false}, // not double
		{1_000_000, 0, false},
		{0, 0, false},
	} {
		if got := bigGrowth(tc.floor, tc.now); got != tc.want {
			t.Errorf("bigGrowth(%d, %d) = %v; want %v", tc.floor, tc.now, got, tc.want)
		}
	}
}

// TestReclaimAfterGrowthSettles: memory is given back once a large growth
// has stopped, not while leases are still being taken, and only once for
// that growth.
func TestReclaimAfterGrowthSettles(t *testing.T) {
	r := newReclaimer(0)
	steps := []struct {
		held int
		want bool
	}{
		{300_000, false},   // filling
		{700_000, false},   // still filling
		{1_000_000, false}, // the last second still took 300,000
		{1_000_000, true},  // settled: give back
		{1_000_000, false}, // once
		{1_000_100, false}, // small changes after it do nothing
		{1_500_000, false}, // growing again, but not double the floor
		{1_500_000, false},
		{2_000_000, false},
		{2_000_000, true}, // double, settled
	}
	for i, st := range steps {
		if got := r.tick(st.held); got != st.want {
			t.Fatalf("tick %d (held %d) = %v; want %v", i, st.held, got, st.want)
		}
		if st.want {
			r.gaveBack(st.held)
		}
	}
}

func TestIdleNeed(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		live, want uint64
	}{
		{0, 8 * mib},         // an empty daemon: the floor
		{4 * mib, 8 * mib},   // a small heap: the floor
		{256 * mib, 8 * mib}, // the floor and the share meet
		{288 * mib, 9 * mib}, // a million leases: a 32nd
		{1 << 30, 32 * mib},
	} {
		if got := idleNeed(tc.live); got != tc.want {
			t.Errorf("idleNeed(%d MiB) = %d MiB; want %d MiB", tc.live/mib, got/mib, tc.want/mib)
		}
	}
}

// TestReclaimWhenTrafficQuietens: the garbage traffic left is given back
// once the daemon has been quiet for two seconds, not while it allocates,
// not after a pause of one second, not when there is too little of it for
// the heap's size, not twice for the same allocations, and not sooner
// than reclaimIdleGap after the last give-back.
func TestReclaimWhenTrafficQuietens(t *testing.T) {
	const mib = 1 << 20
	var r heapReclaimer
	var allocs uint64
	type step struct {
		live, excess, alloc uint64 // alloc: allocated since the last tick
		want                bool
	}
	busy := func(n int) []step { // n seconds of traffic: 20 MiB a second
		var ss []step
		for range n {
			ss = append(ss, step{288 * mib, 100 * mib, 20 * mib, false})
		}
		return ss
	}
	var steps []step
	steps = append(steps, step{288 * mib, 5 * mib, 900 * mib, false}) // the fill
	steps = append(steps, busy(9)...)
	steps = append(steps,
		step{288 * mib, 40 * mib, 0, false},        // quiet, 40 MiB above a million leases' live heap: one second
		step{288 * mib, 40 * mib, 10 * mib, false}, // a burst
		step{288 * mib, 50 * mib, 0, false},        // quiet again
		step{288 * mib, 50 * mib, 0, true},         // for two seconds: give back
		step{288 * mib, 5 * mib, 0, false},         // given back (what a collection cannot free stays)
	)
	steps = append(steps, busy(1)...)
	steps = append(steps,
		step{288 * mib, 30 * mib, 0, false},
		step{288 * mib, 30 * mib, 0, false}, // quiet for two seconds, but only 4 since the last give-back
		step{288 * mib, 30 * mib, 0, false},
		step{288 * mib, 30 * mib, 0, false},
		step{288 * mib, 30 * mib, 0, false},
		step{288 * mib, 30 * mib, 0, false},
		step{288 * mib, 30 * mib, 0, false},
		step{288 * mib, 30 * mib, 100 << 10, true}, // nearly quiet, 10 since the last give-back
	)
	for range 12 { // what a collection could not free, with nothing allocated since: never again
		steps = append(steps, step{288 * mib, 30 * mib, 0, false})
	}
	steps = append(steps,
		busy(1)[0],
		step{288 * mib, 8 * mib, 0, false}, // quiet, but under a 32nd of the live heap
		step{288 * mib, 8 * mib, 0, false},
		step{4 * mib, 7 * mib, 0, false}, // a small heap: under the 8 MiB floor
		step{4 * mib, 8 * mib, 0, true},  // at it
	)
	for i, st := range steps {
		allocs += st.alloc
		h := heapMem{live: st.live, excess: st.excess, allocs: allocs}
		if got := r.tick(h); got != st.want {
			t.Fatalf("tick %d (%+v) = %v; want %v", i, st, got, st.want)
		}
		if st.want {
			r.gaveBack(h)
		}
	}
}

// TestHeapMeter: the meter reads the runtime's figures, and garbage left
// behind shows as excess until a collection.
func TestHeapMeter(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collection while the garbage is made
	m := newHeapMeter()
	var before, after heapMem
	for range 3 { // a collection another test's daemon forces in between spoils an attempt
		debug.FreeOSMemory() // nothing free kept that the garbage could reuse
		before = m.read()
		if before.live == 0 || before.allocs == 0 {
			t.Fatalf("read %+v: no live heap or allocations", before)
		}
		for range 4096 {
			sink = make([]byte, 8<<10)
		}
		after = m.read()
		if after.allocs-before.allocs >= 24<<20 && after.excess >= before.excess+16<<20 {
			return
		}
	}
	t.Fatalf("after 32 MiB of garbage: %+v (before %+v)", after, before)
}

var sink []byte
