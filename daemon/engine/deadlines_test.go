package engine

import (
	"fmt"
	"math/rand/v2"
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
				l := &lease{ExpiresAt: int64(rapid.IntRange(0, 20).Draw(t, "at")), Fence: fence}
				h.push(l)
				live = append(live, l)
			case op == 2:
				k := rapid.IntRange(0, len(live)-1).Draw(t, "k")
				h.remove(int(live[k].heapIdx))
				require.Equal(t, int32(-1), live[k].heapIdx)
				live = slices.Delete(live, k, k+1)
			default:
				k := rapid.IntRange(0, len(live)-1).Draw(t, "k")
				live[k].ExpiresAt = int64(rapid.IntRange(0, 20).Draw(t, "at"))
				h.fix(int(live[k].heapIdx))
			}
			require.Len(t, h, len(live))
			for i := range h {
				require.Equal(t, int32(i), h[i].l.heapIdx)
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
				h.push(&lease{ExpiresAt: 1_000_000, Fence: uint64(i)})
			}
			x := &lease{ExpiresAt: 5, Fence: 1 << 40}
			for i := 0; i < b.N; i++ {
				h.push(x)
				h.remove(int(x.heapIdx))
			}
		})
	}
}

// TestLeaseTable checks the id index against a map: ids name their slots,
// freed slots are reused most recent first, recorded ids may name any slot.
func TestLeaseTable(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var tab leaseTable
		want := map[leaseKey]*lease{}
		var keys []leaseKey
		for i, n := 0, rapid.IntRange(0, 300).Draw(t, "n"); i < n; i++ {
			var k leaseKey
			k[0] = byte(rapid.IntRange(0, 255).Draw(t, "rand"))
			switch rapid.IntRange(0, 3).Draw(t, "op") {
			case 0, 1: // grant
				withSlot(&k, tab.alloc())
				l := &lease{}
				require.True(t, tab.put(k, l))
				want[k] = l
				keys = append(keys, k)
			case 2: // replay of a recorded id naming some slot
				withSlot(&k, uint32(rapid.IntRange(0, 40).Draw(t, "slot")))
				l := &lease{}
				ok := tab.put(k, l)
				taken := false
				for o := range want {
					taken = taken || slotOf(&o) == slotOf(&k)
				}
				require.Equal(t, !taken, ok)
				if ok {
					want[k] = l
					keys = append(keys, k)
				}
			default:
				if len(keys) > 0 {
					k = keys[rapid.IntRange(0, len(keys)-1).Draw(t, "k")]
				}
				tab.del(k)
				delete(want, k)
			}
			require.Equal(t, len(want), tab.len())
			for _, k := range keys {
				require.Equal(t, want[k], tab.get(k))
			}
		}
		n := 0
		tab.each(func(l *lease) { n++ })
		require.Equal(t, len(want), n)
		var k leaseKey
		withSlot(&k, maxLeaseSlot)
		require.False(t, tab.put(k, &lease{}))
		require.Nil(t, tab.get(k))
	})
}

// TestQueuesShrinkWhenLeasesGo: the expiry queue, the summary entry's heap
// and the session's list that grew with many leases give their memory back
// when most of the leases are released, in whatever order.
func TestQueuesShrinkWhenLeasesGo(t *testing.T) {
	const n, kept = 5000, 10
	e := New(Config{})
	mustRegister(t, e, "a", 1)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = mustGrant(t, e, t0+int64(i%97), "a", "s", "/d/f"+itoa(i), "MUTATES").ID
	}
	k, ok := parseLeaseKey(ids[0])
	require.True(t, ok)
	x := e.leases.get(k)
	h := upOf(x)
	require.GreaterOrEqual(t, cap(e.leaseDeadlines), n)
	require.GreaterOrEqual(t, cap(h.leases), n)
	require.GreaterOrEqual(t, cap(x.sess().ls), n)
	for _, i := range rand.New(rand.NewPCG(1, 2)).Perm(n - kept) { // not in fence order
		ok, _, err := e.Release(t0, alice, ids[kept+i])
		require.NoError(t, err)
		require.True(t, ok)
	}
	require.Equal(t, kept, e.leases.len())
	require.Less(t, cap(e.leaseDeadlines), shrinkMin*2)
	require.Less(t, cap(h.leases), shrinkMin*2)
	require.Less(t, cap(x.sess().ls), shrinkMin*2)
	for _, id := range ids[:kept] {
		ok, _, err := e.Release(t0, alice, id)
		require.NoError(t, err)
		require.True(t, ok)
	}
	require.Less(t, cap(x.sess().ls), shrinkMin)
}
