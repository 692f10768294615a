package engine

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// TestResTableAgreesWithAMap runs random inserts and deletes, enough for
// buckets to split, the directory to double and deleted slots to be
// dropped by rebuilds, and checks the table against a map after each
// phase: every key found, no other, all() yielding each once.
func TestResTableAgreesWithAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := newResTable()
	ref := map[string]*resource{}
	check := func() {
		t.Helper()
		require.Equal(t, len(ref), tab.len())
		seen := map[*resource]bool{}
		for r := range tab.all() {
			require.False(t, seen[r], "all() yields %q twice", r.key)
			seen[r] = true
			require.Same(t, ref[r.key], r, "all() yields %q, which is not in the table", r.key)
		}
		require.Len(t, seen, len(ref))
		for k, r := range ref {
			require.Same(t, r, tab.get(k), "get(%q)", k)
			require.Same(t, r, tab.getBytes([]byte(k)), "getBytes(%q)", k)
		}
		for i := range 1000 {
			k := "FILE:/absent/" + strconv.Itoa(i)
			require.Nil(t, tab.get(k))
		}
	}
	keys := func(n int) []string {
		var ks []string
		for k := range ref {
			ks = append(ks, k)
			if len(ks) == n {
				break
			}
		}
		return ks
	}
	next := 0
	add := func(n int) {
		for range n {
			r := &resource{key: "FILE:/k/" + strconv.Itoa(next)}
			next++
			tab.put(r)
			ref[r.key] = r
		}
	}
	del := func(n int) {
		for _, k := range keys(n) {
			tab.del(ref[k])
			delete(ref, k)
		}
	}
	add(49 * resBucketSlots)
	check()
	require.Greater(t, tab.depth, uint8(4), "49 buckets' worth of keys need many buckets")
	del(29 * resBucketSlots)
	check()
	// Churn in place: deleted slots must be reused or dropped, never
	// fill a bucket.
	for range 20 {
		add(rng.IntN(5 * resBucketSlots))
		del(rng.IntN(5 * resBucketSlots))
	}
	check()
	// A resource that is not the table's entry for its key is not
	// removed by del.
	k := keys(1)[0]
	tab.del(&resource{key: k})
	require.Same(t, ref[k], tab.get(k))
	del(len(ref))
	check()
	add(2 * resBucketSlots)
	check()
}

// TestResBucketIsALargeObject keeps a bucket over Go's largest small size
// class (32 KiB, runtime/sizeclasses.go's _MaxSmallSize), so that it has a
// span of its own and never pins garbage of its size class (restable.go).
func TestResBucketIsALargeObject(t *testing.T) {
	size := unsafe.Sizeof(resBucket{})
	require.Equal(t, uintptr(resBucketSize), size, "resBucketSize is a bucket's size")
	require.Greater(t, size, uintptr(32<<10), "a bucket must be a large object")
}
