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
