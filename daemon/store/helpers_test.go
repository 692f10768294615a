package store

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/klockd/klock/daemon/engine"
)

// baseTime is the fake clock tests start at (Unix ms); leases get long TTLs
// so nothing expires unless a test says so.
const baseTime = 1_800_000_000_000

var root = engine.Caller{UID: 0, PID: 1}

// logBuffer collects a store's log lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// world is an engine with its mutex and store, used the way the server
// uses them.
type world struct {
	tb   testing.TB
	dir  string
	opts Options
	logs *logBuffer

	mu      sync.Mutex // the engine mutex
	eng     *engine.Engine
	st      *Store
	now     int64
	trace   []*engine.State // when tracing: the state after each do
	tracing bool
}

func newWorld(tb testing.TB, dir string, opts Options) *world {
	tb.Helper()
	w, err := openWorld(tb, dir, opts)
	if err != nil {
		tb.Fatalf("opening %s: %v", dir, err)
	}
	return w
}

func openWorld(tb testing.TB, dir string, opts Options) (*world, error) {
	logs := &logBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w := &world{tb: tb, dir: dir, opts: opts, logs: logs, now: baseTime}
	st, err := Open(dir, opts)
	if err != nil {
		return nil, err
	}
	w.eng = engine.New(engine.Config{Journal: true})
	if _, err := st.Recover(w.eng); err != nil {
		st.Close()
		return nil, err
	}
	st.Start()
	w.st = st
	tb.Cleanup(func() { w.st.Close() })
	return w, nil
}

// do runs fn under the engine mutex, appends its records and waits for
// them, as the server does for one request.
func (w *world) do(fn func(e *engine.Engine, now int64) error) error {
	w.mu.Lock()
	w.now++
	err := fn(w.eng, w.now)
	seq := w.st.Append(w.eng.Records())
	if w.tracing {
		w.trace = append(w.trace, w.eng.Snapshot())
	}
	w.mu.Unlock()
	if werr := w.st.Wait(seq); werr != nil {
		return werr
	}
	return err
}

// must is do that fails the test on error (test goroutine only).
func (w *world) must(fn func(e *engine.Engine, now int64) error) {
	w.tb.Helper()
	if err := w.do(fn); err != nil {
		w.tb.Fatal(err)
	}
}

func (w *world) snapshot() *engine.State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.eng.Snapshot()
}

func (w *world) close() {
	w.tb.Helper()
	if err := w.st.Close(); err != nil {
		w.tb.Fatalf("Close: %v", err)
	}
}

func (w *world) lock(fn func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn()
}

func (w *world) register(agent string, prio int64) {
	w.tb.Helper()
	w.must(func(e *engine.Engine, now int64) error {
		_, err := e.Register(now, root, agent, prio, true)
		return err
	})
}

// acquire takes a MUTATES lease on FILE:/<path> and returns it.
func (w *world) acquire(agent, path string) engine.Lease {
	w.tb.Helper()
	var got engine.Lease
	w.must(func(e *engine.Engine, now int64) error {
		res, err := e.Acquire(now, root, engine.AcquireRequest{
			AgentID: agent, SessionID: "s1", TTL: 3_600_000,
			Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: "/" + path, Predicate: "MUTATES"}},
		})
		if err != nil {
			return err
		}
		if !res.Granted {
			return fmt.Errorf("acquire %s for %s: denied %+v", path, agent, res.Denial)
		}
		got = res.Leases[0]
		return nil
	})
	return got
}

func (w *world) release(id string) {
	w.tb.Helper()
	w.must(func(e *engine.Engine, now int64) error {
		_, _, err := e.Release(now, root, id)
		return err
	})
}

// populate makes a varied state: agents, leases, releases, heartbeats, a
// frozen resource and an ended session; one record per call.
func (w *world) populate(n int) {
	w.tb.Helper()
	for i := range 4 {
		w.register(fmt.Sprintf("agent-%d", i), int64(10+i))
	}
	var ids []string
	for i := range n {
		l := w.acquire(fmt.Sprintf("agent-%d", i%4), fmt.Sprintf("f%d", i))
		ids = append(ids, l.ID)
		switch {
		case i%3 == 0:
			w.release(l.ID)
		case i%5 == 0:
			w.must(func(e *engine.Engine, now int64) error {
				_, err := e.Heartbeat(now, root, l.ID, 7_200_000)
				return err
			})
		}
	}
	w.must(func(e *engine.Engine, now int64) error {
		_, _, err := e.Freeze(now, root, "FILE", "/frozen")
		return err
	})
}

// sameState fails unless got equals want.
func sameState(tb testing.TB, got, want *engine.State) {
	tb.Helper()
	if !reflect.DeepEqual(got, want) {
		tb.Fatalf("recovered state differs:\n got  %d agents, %d leases, fence %d, frozen %v\n want %d agents, %d leases, fence %d, frozen %v",
			len(got.Agents), len(got.Leases), got.Fence, got.Frozen, len(want.Agents), len(want.Leases), want.Fence, want.Frozen)
	}
}

// currentLog returns the path of the highest log in dir.
func currentLog(tb testing.TB, dir string) string {
	tb.Helper()
	files, err := listState(dir)
	if err != nil {
		tb.Fatal(err)
	}
	last := ""
	for _, f := range files {
		if f.kind == kindLog {
			last = filepath.Join(dir, f.name)
		}
	}
	if last == "" {
		tb.Fatalf("no log in %s", dir)
	}
	return last
}

// recordOffsets returns the start offset of every record in a log file and
// the file's length.
func recordOffsets(tb testing.TB, path string) ([]int64, int64) {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var offs []int64
	off := int64(logHeaderSize)
	for off < int64(len(b)) {
		offs = append(offs, off)
		n, _ := frameLength(b[off:])
		off += int64(frameHeaderSize + n)
	}
	return offs, int64(len(b))
}

// copyDir copies the state files of src into a new temp dir.
func copyDir(tb testing.TB, src string) string {
	tb.Helper()
	dst := tb.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == lockFileName {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return dst
}
