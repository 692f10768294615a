package engine

import (
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// TestResourceHoldersAgreeWithAList holds and unholds leases on one
// resource in any order, with a queue and a summary coming and going
// meanwhile (the other things resExtra keeps), and checks its holders
// against a plain list: the same leases, each knowing its index, and no
// resExtra made while the key has never had two leases, a queue or a
// summary.
func TestResourceHoldersAgreeWithAList(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := &resource{key: "FILE:/a"}
		var want []*lease
		var queue []queued
		var below *summary
		needsExtra := false
		for range rapid.IntRange(0, 40).Draw(t, "steps") {
			switch op := rapid.IntRange(0, 3).Draw(t, "op"); {
			case op == 0 || len(want) == 0:
				x := &lease{}
				r.hold(x)
				want = append(want, x)
				needsExtra = needsExtra || len(want) > 1
			case op == 1:
				x := want[rapid.IntRange(0, len(want)-1).Draw(t, "which")]
				r.unhold(x)
				want = deleteLease(want, x)
			case op == 2:
				queue = append(queue, queued{w: &waiter{}})
				r.extra().q = queue
				needsExtra = true
			default:
				if below == nil {
					below = new(summary)
				} else {
					below = nil
				}
				r.extra().below = below
				needsExtra = true
			}
			require.ElementsMatch(t, want, r.holders())
			require.Equal(t, needsExtra, r.x != nil, "resExtra made")
			require.Equal(t, len(queue), len(r.queue()), "queue kept")
			require.Same(t, below, r.below(), "summary kept")
		}
	})
}

func deleteLease(ls []*lease, x *lease) []*lease {
	for i, l := range ls {
		if l == x {
			return append(ls[:i], ls[i+1:]...)
		}
	}
	return ls
}
