package store

import (
	"fmt"
	"testing"

	"github.com/klockd/klock/daemon/engine"
)

// TestBoundLeasesRoundTrip checks that a lease's binding to its process,
// and the end of a process, come back from the log and from a snapshot:
// recovery then knows which processes to check.
func TestBoundLeasesRoundTrip(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{CompactMinBytes: -1})
	w.register("a", 1)
	alive := engine.Process{PID: 100, Boot: 3, Start: 12345}
	dead := engine.Process{PID: 101, Boot: 3, Start: 12346}
	w.must(func(e *engine.Engine, now int64) error {
		for i, p := range []engine.Process{alive, alive, dead} {
			res, err := e.Acquire(now, root, engine.AcquireRequest{AgentID: "a", SessionID: "s", Bind: &p,
				Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/b/%d", i), Predicate: "MUTATES"}}})
			if err != nil || !res.Granted {
				return fmt.Errorf("acquire %d: %v %+v", i, err, res.Denial)
			}
		}
		e.ProcessEnded(now, dead)
		return nil
	})
	want := w.snapshot()
	w.close()

	check := func(what string) {
		t.Helper()
		w := newWorld(t, dir, Options{CompactMinBytes: -1})
		defer w.close()
		sameState(t, w.snapshot(), want)
		w.lock(func() {
			if got := w.eng.BoundProcesses(); len(got) != 1 || got[0] != alive {
				t.Errorf("%s: bound processes %+v; want only %+v", what, got, alive)
			}
		})
	}
	check("from the log")
	w = newWorld(t, dir, Options{CompactMinBytes: -1})
	if err := w.st.Compact(); err != nil {
		t.Fatal(err)
	}
	w.close()
	check("from a snapshot")
}

// TestMassProcessEndIsSplit checks that a process ending with more leases
// than one record holds is logged in parts that replay to the same state.
func TestMassProcessEndIsSplit(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{CompactMinBytes: -1})
	w.register("a", 1)
	p := engine.Process{PID: 200, Boot: 1, Start: 1}
	const n = maxIDsPerRecord + 10
	w.must(func(e *engine.Engine, now int64) error {
		for i := range n {
			res, err := e.Acquire(now, root, engine.AcquireRequest{AgentID: "a", SessionID: "s", Bind: &p,
				Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/m/%d", i), Predicate: "MUTATES"}}})
			if err != nil || !res.Granted {
				return fmt.Errorf("acquire %d: %v", i, err)
			}
		}
		return nil
	})
	w.must(func(e *engine.Engine, now int64) error {
		if got, _ := e.ProcessEnded(now, p); got != n {
			return fmt.Errorf("ProcessEnded ended %d leases; want %d", got, n)
		}
		return nil
	})
	checkSplit(t, w, dir, n, "process-end")
}
