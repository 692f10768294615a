package engine

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// summaryAt returns the summary of the subtree key FILE:path (nil when it
// has none).
func summaryAt(t *testing.T, e *Engine, path string) *summary {
	t.Helper()
	r := e.resources.get("FILE:" + path)
	require.NotNil(t, r, "no resource %s", path)
	return r.below()
}

// TestSoftEntriesKeptForManyAgents: with many agents taking and releasing
// files below one key in turn, as klock-bench's workers do, an agent's
// entry stays in the summaries above its file from its release to its
// next acquire, however many others release meanwhile (up to twice as
// many as hold), instead of being dropped and made again.
func TestSoftEntriesKeptForManyAgents(t *testing.T) {
	const agents, holding = 64, 32
	e := New(Config{})
	ids := make([]string, agents)
	for i := range ids {
		ids[i] = "w" + strconv.Itoa(i)
		mustRegister(t, e, ids[i], int64(i+1))
	}
	held := make([]string, agents)
	entries := make(map[string]*heldBy) // agent: its entry below /bench/u/, once made
	now := t0
	for i := range 4 * agents {
		k := i % agents
		held[k] = mustGrant(t, e, now, ids[k], "bench", "/bench/u/"+ids[k], "MUTATES").ID
		for _, path := range []string{"/bench/u/", "/bench/", "/"} {
			list := summaryAt(t, e, path).held[classExclusive]
			j, ok := findHeld(list, e.agents[ids[k]], "bench")
			require.True(t, ok, "%s has no entry below %s", ids[k], path)
			if path != "/bench/u/" {
				continue
			}
			if old := entries[ids[k]]; old != nil {
				require.Same(t, old, list[j], "step %d: %s's entry below %s was made again", i, ids[k], path)
			}
			entries[ids[k]] = list[j]
		}
		r := (k + agents - holding) % agents
		if held[r] != "" {
			ok, _, err := e.Release(now, alice, held[r])
			require.NoError(t, err)
			require.True(t, ok)
			held[r] = ""
		}
		now++
	}
	checkIndex(t, e)
}

// TestSoftEntriesBounded: soft entries of agents that hold nothing any
// more do not pile up: a summary keeps at most twice as many as it has
// entries that hold, plus one per class. Here 200 agents each take and
// release a file below /d/ in turn, and are unregistered.
func TestSoftEntriesBounded(t *testing.T) {
	e := New(Config{})
	mustRegister(t, e, "holder", 1000)
	mustGrant(t, e, t0, "holder", "s", "/d/held", "MUTATES") // keeps /d/ summed up
	for i := range 200 {
		id := "a" + strconv.Itoa(i)
		mustRegister(t, e, id, int64(i))
		for _, pred := range []string{"MUTATES", "CONSUMES", "PROVIDES"} {
			l := mustGrant(t, e, t0, id, "s", "/d/"+id, pred)
			ok, _, err := e.Release(t0, alice, l.ID)
			require.NoError(t, err)
			require.True(t, ok)
		}
		ok, err := e.Unregister(t0, alice, id)
		require.NoError(t, err)
		require.True(t, ok)
		for _, path := range []string{"/d/", "/"} {
			s := summaryAt(t, e, path)
			n := 0
			for c := range s.held {
				n += len(s.held[c])
			}
			// One entry holds (holder's); at most 2*1+3 soft.
			require.LessOrEqual(t, len(s.soft), 5, "after %s: soft entries below %s", id, path)
			require.Equal(t, n, len(s.soft)+1, "after %s: entries below %s", id, path)
		}
	}
	checkIndex(t, e)
}

// TestDroppedEntryNotRemembered: an agent remembers the summary entry its
// last lease went in (agent.held); once that entry is dropped, and not kept
// for reuse, the agent's next lease must not go in it.
func TestDroppedEntryNotRemembered(t *testing.T) {
	e := New(Config{})
	var ids []string
	for _, id := range []string{"a", "b1", "b2", "b3"} {
		mustRegister(t, e, id, 1)
		ids = append(ids, mustGrant(t, e, t0, id, "s", "/d/"+id, "MUTATES").ID)
	}
	for len(e.freeHeld) < maxFreeHeld { // so that the dropped entry is not kept
		e.freeHeld = append(e.freeHeld, new(heldBy))
	}
	for _, id := range ids {
		ok, _, err := e.Release(t0, alice, id)
		require.NoError(t, err)
		require.True(t, ok)
	}
	// Four soft entries below /d/, three allowed: a's went first.
	list := summaryAt(t, e, "/d/").held[classExclusive]
	_, ok := findHeld(list, e.agents["a"], "s")
	require.False(t, ok, "a's entry below /d/ was kept")
	mustGrant(t, e, t0, "a", "s", "/d/a", "MUTATES")
	checkIndex(t, e)
}
