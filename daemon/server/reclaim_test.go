package server

import "testing"

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
