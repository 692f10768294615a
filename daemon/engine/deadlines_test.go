package engine

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

func TestLeaseHeap(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var h leaseHeap
		var live []*lease
		fence := uint64(0)
		for i, n := 0, rapid.IntRange(0, 200).Draw(t, "n"); i < n; i++ {
			switch op := rapid.IntRange(0, 3).Draw(t, "op"); {
			case op <= 1 || len(live) == 0:
				fence++
				l := &lease{Lease: Lease{ExpiresAt: int64(rapid.IntRange(0, 20).Draw(t, "at")), Fence: fence}}
				h.push(l)
				live = append(live, l)
			case op == 2:
				k := rapid.IntRange(0, len(live)-1).Draw(t, "k")
				h.remove(live[k].heapIdx)
				require.Equal(t, -1, live[k].heapIdx)
				live = slices.Delete(live, k, k+1)
			default:
				k := rapid.IntRange(0, len(live)-1).Draw(t, "k")
				live[k].ExpiresAt = int64(rapid.IntRange(0, 20).Draw(t, "at"))
				h.fix(live[k].heapIdx)
			}
			require.Len(t, h, len(live))
			for i := range h {
				require.Equal(t, i, h[i].l.heapIdx)
				require.Equal(t, h[i].l.ExpiresAt, h[i].at)
				if i > 0 {
					require.False(t, h[i].before(&h[(i-1)/4]), "heap order")
				}
			}
			now := int64(rapid.IntRange(0, 20).Draw(t, "now"))
			due := 0
			for _, l := range live {
				if l.ExpiresAt <= now {
					due++
				}
			}
			require.Equal(t, due, h.countDue(now))
		}
	})
}

// BenchmarkLeaseHeap: push of a new earliest deadline and its removal with
// n other deadlines: the worst case for a heap (full depth both ways).
func BenchmarkLeaseHeap(b *testing.B) {
	for _, n := range []int{1, 100000} {
		b.Run(fmt.Sprintf("leases=%d", n), func(b *testing.B) {
			var h leaseHeap
			for i := 0; i < n; i++ {
				h.push(&lease{Lease: Lease{ExpiresAt: 1_000_000, Fence: uint64(i)}})
			}
			x := &lease{Lease: Lease{ExpiresAt: 5, Fence: 1 << 40}}
			for i := 0; i < b.N; i++ {
				h.push(x)
				h.remove(x.heapIdx)
			}
		})
	}
}
