package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/klockd/klock/daemon/engine"
)

func emptyState() *engine.State { return engine.New(engine.Config{}).Snapshot() }

func TestRoundTrip(t *testing.T) {
	for _, mode := range []FsyncMode{FsyncAlways, FsyncEverySec, FsyncNever} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			w := newWorld(t, dir, Options{Fsync: mode})
			w.populate(30)
			want := w.snapshot()
			w.close()

			w2 := newWorld(t, dir, Options{Fsync: mode})
			sameState(t, w2.snapshot(), want)
			if !strings.Contains(w2.logs.String(), "state recovered") {
				t.Errorf("no recovery line in log:\n%s", w2.logs.String())
			}
			// The recovered store keeps appending where the log ended.
			l := w2.acquire("agent-1", "after-restart")
			if l.Fence <= want.Fence {
				t.Errorf("fence after restart = %d; want > %d", l.Fence, want.Fence)
			}
			want2 := w2.snapshot()
			w2.close()
			w3 := newWorld(t, dir, Options{Fsync: mode})
			sameState(t, w3.snapshot(), want2)
		})
	}
}

func TestRecoverWithoutClose(t *testing.T) {
	// Acknowledged records are in the file even if Close never runs (a
	// kill -9): copy the directory while the store is still open.
	dir := t.TempDir()
	w := newWorld(t, dir, Options{Fsync: FsyncNever})
	w.populate(20)
	want := w.snapshot()
	crashed := copyDir(t, dir)
	w2 := newWorld(t, crashed, Options{})
	sameState(t, w2.snapshot(), want)
}

// tracedLog builds a log of single-record operations and returns the
// state after each record (trace[0] is the empty state).
func tracedLog(t *testing.T, n int) (dir string, trace []*engine.State) {
	t.Helper()
	dir = t.TempDir()
	w := newWorld(t, dir, Options{Fsync: FsyncNever, CompactMinBytes: -1})
	w.tracing = true
	w.populate(n)
	w.close()
	return dir, append([]*engine.State{emptyState()}, w.trace...)
}

func TestTornTailEveryOffset(t *testing.T) {
	dir, trace := tracedLog(t, 12)
	log := currentLog(t, dir)
	offs, size := recordOffsets(t, log)
	if len(offs) != len(trace)-1 {
		t.Fatalf("log has %d records; test made %d", len(offs), len(trace)-1)
	}
	last := offs[len(offs)-1]
	orig, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, damaged []byte) {
		d := copyDir(t, dir)
		path := filepath.Join(d, filepath.Base(log))
		if err := os.WriteFile(path, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		w := newWorld(t, d, Options{})
		sameState(t, w.snapshot(), trace[len(trace)-2])
		want := fmt.Sprintf("offset=%d", last)
		if logs := w.logs.String(); !strings.Contains(logs, "cut torn tail") || !strings.Contains(logs, want) || !strings.Contains(logs, path) {
			t.Fatalf("no torn-tail warning naming %s and %s:\n%s", path, want, logs)
		}
		// The tail is cut on disk and appending goes on after it.
		w.acquire("agent-3", "next")
		after := w.snapshot()
		w.close()
		w2 := newWorld(t, d, Options{})
		sameState(t, w2.snapshot(), after)
	}
	for cut := last + 1; cut < size; cut++ {
		t.Run(fmt.Sprintf("cut-%d", cut), func(t *testing.T) { check(t, orig[:cut]) })
	}
	for at := last; at < size; at++ {
		t.Run(fmt.Sprintf("flip-%d", at), func(t *testing.T) {
			b := append([]byte(nil), orig...)
			b[at] ^= 0x5a
			check(t, b)
		})
	}
	t.Run("zeros-after", func(t *testing.T) {
		b := append(append([]byte(nil), orig[:last+3]...), make([]byte, 4096)...)
		check(t, b)
	})
}

func TestMidLogDamage(t *testing.T) {
	dir, trace := tracedLog(t, 12)
	log := currentLog(t, dir)
	offs, _ := recordOffsets(t, log)
	orig, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{0, 1, len(offs) / 2, len(offs) - 2} {
		for _, delta := range []int64{0, 4, 9} { // length, checksum, body
			at := offs[k] + delta
			t.Run(fmt.Sprintf("record-%d-byte-%d", k, delta), func(t *testing.T) {
				b := append([]byte(nil), orig...)
				b[at] ^= 0x20
				d := copyDir(t, dir)
				path := filepath.Join(d, filepath.Base(log))
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
				_, err := openWorld(t, d, Options{})
				if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", offs[k])) || !strings.Contains(err.Error(), "--recover=truncate") {
					t.Fatalf("Recover = %v; want an error naming %s, offset %d and --recover=truncate", err, path, offs[k])
				}
				w := newWorld(t, d, Options{Recover: RecoverTruncate})
				sameState(t, w.snapshot(), trace[k])
				aside, _ := filepath.Glob(path + ".damaged-*")
				if len(aside) != 1 {
					t.Fatalf("damaged copy: %v; want one", aside)
				}
				w.register("agent-new", 99)
				after := w.snapshot()
				w.close()
				w2 := newWorld(t, d, Options{})
				sameState(t, w2.snapshot(), after)
			})
		}
	}
}

func TestBadHeader(t *testing.T) {
	dir, _ := tracedLog(t, 3)
	log := currentLog(t, dir)
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	b[2] ^= 1
	d := copyDir(t, dir)
	if err := os.WriteFile(filepath.Join(d, filepath.Base(log)), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openWorld(t, d, Options{}); err == nil || !strings.Contains(err.Error(), "offset 0") {
		t.Fatalf("Recover with a bad header = %v; want damage at offset 0", err)
	}

	// A log whose header was cut short (a crash while creating it) holds
	// nothing and is replaced.
	d = copyDir(t, dir)
	if err := os.WriteFile(filepath.Join(d, logName(2)), []byte("KLOCK"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, d, Options{})
	if !strings.Contains(w.logs.String(), "torn header") {
		t.Errorf("no warning about the torn header:\n%s", w.logs.String())
	}

	// A newer format version is refused even with --recover=truncate.
	v := append([]byte(nil), b...)
	v[2] ^= 1
	v[8] = 9
	binary.LittleEndian.PutUint32(v[20:24], crc32.Checksum(v[:20], castagnoli))
	d = copyDir(t, dir)
	if err := os.WriteFile(filepath.Join(d, filepath.Base(log)), v, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openWorld(t, d, Options{Recover: RecoverTruncate}); err == nil {
		t.Fatal("Recover accepted a log with an unknown version")
	}
}

func TestSnapshotDamage(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{CompactMinBytes: -1})
	w.populate(10)
	if err := w.st.Compact(); err != nil {
		t.Fatal(err)
	}
	w.acquire("agent-2", "post-snapshot")
	want := w.snapshot()
	w.close()
	sameState(t, newWorldClosed(t, dir), want)

	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshot.*"))
	if len(snaps) != 1 {
		t.Fatalf("snapshots after compaction: %v; want one", snaps)
	}
	orig, err := os.ReadFile(snaps[0])
	if err != nil {
		t.Fatal(err)
	}
	for name, damage := range map[string]func([]byte) []byte{
		"flip-body":   func(b []byte) []byte { b[len(b)-3] ^= 1; return b },
		"flip-header": func(b []byte) []byte { b[21] ^= 1; return b },
		"cut":         func(b []byte) []byte { return b[:len(b)-10] },
		"empty":       func(b []byte) []byte { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			d := copyDir(t, dir)
			path := filepath.Join(d, filepath.Base(snaps[0]))
			if err := os.WriteFile(path, damage(append([]byte(nil), orig...)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := openWorld(t, d, Options{})
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "damaged") {
				t.Fatalf("Recover = %v; want an error naming the damaged snapshot %s", err, path)
			}
			w := newWorld(t, d, Options{Recover: RecoverTruncate})
			// Nothing precedes the only snapshot: the operator chose to
			// start empty, and the damaged files are kept aside.
			sameState(t, w.snapshot(), emptyState())
			if aside, _ := filepath.Glob(filepath.Join(d, "*.damaged-*")); len(aside) < 2 {
				t.Fatalf("files moved aside: %v; want the snapshot and the log after it", aside)
			}
		})
	}
}

// newWorldClosed recovers dir and returns its state, closing the store.
func newWorldClosed(t *testing.T, dir string) *engine.State {
	t.Helper()
	w := newWorld(t, dir, Options{})
	defer w.close()
	return w.snapshot()
}

func TestInterruptedCompaction(t *testing.T) {
	// Rotation happened but the snapshot was never written (a crash in
	// between): recovery replays the old and the new log.
	dir := t.TempDir()
	w := newWorld(t, dir, Options{CompactMinBytes: -1})
	w.populate(6)
	if err := w.st.prepareNextNow(); err != nil {
		t.Fatal(err)
	}
	w.lock(func() {
		w.st.mu.Lock()
		w.st.rotateLocked(nil)
		w.st.compactThrough = 0 // the snapshot is never written
		w.st.mu.Unlock()
	})
	w.acquire("agent-0", "in-new-log")
	want := w.snapshot()
	w.close()
	if logs, _ := filepath.Glob(filepath.Join(dir, "log.*")); len(logs) != 2 {
		t.Fatalf("logs: %v; want two", logs)
	}
	// A leftover temporary snapshot is ignored and removed.
	tmp := filepath.Join(dir, snapshotName(2)+".tmp")
	if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	sameState(t, newWorldClosed(t, dir), want)
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary snapshot left behind: %v", err)
	}
}

func TestMissingLog(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{CompactMinBytes: -1})
	w.populate(4)
	if err := w.st.prepareNextNow(); err != nil {
		t.Fatal(err)
	}
	w.lock(func() {
		w.st.mu.Lock()
		w.st.rotateLocked(nil)
		w.st.compactThrough = 0
		w.st.mu.Unlock()
	})
	w.acquire("agent-0", "x")
	w.close()
	if err := os.Remove(filepath.Join(dir, logName(1))); err != nil {
		t.Fatal(err)
	}
	if _, err := openWorld(t, dir, Options{}); err == nil || !strings.Contains(err.Error(), logName(1)) {
		t.Fatalf("Recover with log.1 missing = %v; want an error naming it", err)
	}
}

func TestMassExpiryIsSplit(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{CompactMinBytes: -1})
	w.register("a", 1)
	const n = maxIDsPerRecord + 500
	w.must(func(e *engine.Engine, now int64) error {
		for i := range n {
			res, err := e.Acquire(now, root, engine.AcquireRequest{AgentID: "a", SessionID: "s", TTL: 1000,
				Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/m/%d", i), Predicate: "MUTATES"}}})
			if err != nil || !res.Granted {
				return fmt.Errorf("acquire %d: %v", i, err)
			}
		}
		return nil
	})
	w.must(func(e *engine.Engine, now int64) error {
		if got, _ := e.Expire(now + 2000); got != n {
			return fmt.Errorf("Expire removed %d leases; want %d", got, n)
		}
		return nil
	})
	checkSplit(t, w, dir, n, "expiry")
}

// checkSplit closes w after a removal of n leases, each granted in a
// record of its own after one registration, and checks that the removal
// was logged in two parts that replay to the same state.
func checkSplit(t *testing.T, w *world, dir string, n int, what string) {
	t.Helper()
	want := w.snapshot()
	w.close()
	offs, _ := recordOffsets(t, currentLog(t, dir))
	if len(offs) != 1+n+2 {
		t.Errorf("log has %d records; want register + %d grants + 2 %s parts", len(offs), n, what)
	}
	sameState(t, newWorldClosed(t, dir), want)
}

func TestUnusedNextLogIsDropped(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{})
	w.populate(5)
	if err := w.st.prepareNextNow(); err != nil {
		t.Fatal(err)
	}
	want := w.snapshot()
	crashed := copyDir(t, dir) // killed before the rotation
	if _, err := os.Stat(filepath.Join(crashed, logName(2))); err != nil {
		t.Fatalf("pre-created log missing from the copy: %v", err)
	}
	w2 := newWorld(t, crashed, Options{})
	sameState(t, w2.snapshot(), want)
	if _, err := os.Stat(filepath.Join(crashed, logName(2))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("empty pre-created log kept after recovery (%v); runs would each start a new file", err)
	}
	w2.st.mu.Lock()
	gen, size := w2.st.gen, w2.st.logBytes
	w2.st.mu.Unlock()
	if gen != 1 || size != fileSize(t, filepath.Join(crashed, logName(1))) {
		t.Fatalf("appending to log %d with %d bytes counted; want log 1 and its size", gen, size)
	}
}

// TestRecoverStartsNothing: Recover only recovers; the background fsync and
// compaction goroutines start with Start and end with Close.
func TestRecoverStartsNothing(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{})
	w.populate(5)
	w.close()
	st, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	idle := goleak.IgnoreCurrent()
	if _, err := st.Recover(engine.New(engine.Config{Journal: true})); err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(idle); err != nil {
		t.Fatalf("Recover started goroutines: %v", err)
	}
	st.Start()
	if err := goleak.Find(idle); err == nil {
		t.Fatal("Start started no goroutine")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, idle)
}
