package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/daemon/engine"
)

// richWorld is a store's world whose state has every part a snapshot
// writes: agents, leases (with an idempotency key, bound to a process,
// under a path of the holder's own), a frozen key and an ended session.
func richWorld(t *testing.T) *world {
	w := newWorld(t, t.TempDir(), Options{Fsync: FsyncNever})
	w.populate(40)
	w.must(func(e *engine.Engine, now int64) error {
		_, err := e.Acquire(now, root, engine.AcquireRequest{
			AgentID: "agent-1", SessionID: "s2", TTL: 60_000, Idem: "key-1",
			Bind:    &engine.Process{PID: 42, Boot: 7, Start: 99},
			Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: "/bound/./x", Predicate: "MUTATES"}},
		})
		return err
	})
	w.must(func(e *engine.Engine, now int64) error {
		_, _, err := e.EndSession(now, root, "agent-2", "s1")
		return err
	})
	return w
}

// TestEncodeStateIsMarshal: a snapshot written a lease at a time, from
// the engine or from a copy, is the bytes msgpack.Marshal gives for the
// whole state, which is what DecodeSnapshot reads.
func TestEncodeStateIsMarshal(t *testing.T) {
	if n := reflect.TypeFor[engine.State]().NumField(); n != stateFields {
		t.Fatalf("engine.State has %d fields; encodeState writes %d: update it", n, stateFields)
	}
	w := richWorld(t)
	w.lock(func() {
		st := w.eng.Snapshot()
		if len(st.Leases) == 0 || len(st.Frozen) == 0 || len(st.Ended) == 0 {
			t.Fatalf("the state lacks a part: %d leases, frozen %v, ended %v", len(st.Leases), st.Frozen, st.Ended)
		}
		want, err := msgpack.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		for name, src := range map[string]stateSource{"streamed": streamedState(w.eng), "copied": copiedState(st)} {
			var got bytes.Buffer
			if err := encodeState(&got, src); err != nil {
				t.Fatal(name, err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("%s: encodeState wrote %d bytes that differ from msgpack.Marshal's %d", name, got.Len(), len(want))
			}
		}
	})
	// An empty engine, whose lists are empty or nil.
	empty := engine.New(engine.Config{})
	want, err := msgpack.Marshal(empty.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := encodeState(&got, streamedState(empty)); err != nil || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("empty engine: %v, %x; want %x", err, got.Bytes(), want)
	}
}

// TestWriteSnapshotIsTheWholeFile: a snapshot written as it is encoded is
// byte for byte the file of the header and body built in memory (FORMAT.md),
// and reads back as the state.
func TestWriteSnapshotIsTheWholeFile(t *testing.T) {
	w := richWorld(t)
	st := w.snapshot()
	body, err := msgpack.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	want := append(appendSnapshotHeader(nil, 5, body), body...)
	dir := t.TempDir()
	w.lock(func() {
		size, err := saveSnapshot(dir, 5, streamedState(w.eng))
		if err != nil || size != int64(len(want)) {
			t.Fatalf("saveSnapshot = %d, %v; want %d bytes", size, err, len(want))
		}
	})
	got, err := os.ReadFile(filepath.Join(dir, snapshotName(5)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the snapshot file (%d bytes) differs from header+body (%d bytes)", len(got), len(want))
	}
	eng := engine.New(engine.Config{})
	if _, err := restoreSnapshot(eng, filepath.Join(dir, snapshotName(5)), 5); err != nil {
		t.Fatal(err)
	}
	sameState(t, eng.Snapshot(), st)
}

// TestSmallSnapshotAllocatesLittle: writing the snapshot of a small state,
// which a busy daemon with few leases does every CompactMinBytes of log,
// allocates a buffer of about the state's size, not the 1 MiB a large
// state writes through; and the file is still the whole state.
func TestSmallSnapshotAllocatesLittle(t *testing.T) {
	w := richWorld(t)
	st := w.snapshot()
	body, err := msgpack.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	src := copiedState(st)
	if size := snapshotBufSize(src); size < len(body) || size >= 1<<20 {
		t.Fatalf("buffer of %d bytes for a state of %d; want at least the state, under 1 MiB", size, len(body))
	}
	if size := snapshotBufSize(stateSource{head: &engine.State{}, n: 1_000_000}); size != 1<<20 {
		t.Errorf("buffer of %d bytes for a million leases; want 1 MiB", size)
	}
	dir := t.TempDir()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := saveSnapshot(dir, 5, src); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 256<<10 {
		t.Errorf("writing a %d-byte snapshot allocated %d bytes; want at most 256 KiB", len(body), n)
	}
	eng := engine.New(engine.Config{})
	if _, err := restoreSnapshot(eng, filepath.Join(dir, snapshotName(5)), 5); err != nil {
		t.Fatal(err)
	}
	sameState(t, eng.Snapshot(), st)
}

// TestEncodeStateStopsAtAMiscount: a source that yields another number of
// leases than it announced is an error, not a snapshot that reads wrong.
func TestEncodeStateStopsAtAMiscount(t *testing.T) {
	st := richWorld(t).snapshot()
	src := copiedState(st)
	src.n++
	if err := encodeState(&bytes.Buffer{}, src); err == nil {
		t.Fatal("a miscounted state was encoded without error")
	}
	stop := errors.New("stop")
	src = copiedState(st)
	src.each = func(func(engine.LeaseState) error) error { return stop }
	if err := encodeState(&bytes.Buffer{}, src); !errors.Is(err, stop) {
		t.Fatalf("encodeState = %v; want the source's error", err)
	}
}

// TestRestoreSnapshotSaysWhatIsWrong: each way a snapshot file can be
// wrong is its own error, as recovery tells them apart (damage is moved
// aside under --recover=truncate; the rest stops the start).
func TestRestoreSnapshotSaysWhatIsWrong(t *testing.T) {
	file := func(gen uint64, st any) []byte {
		body, err := msgpack.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		return append(appendSnapshotHeader(nil, gen, body), body...)
	}
	good := file(3, richWorld(t).snapshot())
	flipped := bytes.Clone(good)
	flipped[len(flipped)-3] ^= 0x40
	notMsgpack := append(appendSnapshotHeader(nil, 3, []byte{0xc1}), 0xc1)
	newerState := file(3, &engine.State{Version: engine.StateVersion + 1})
	for _, tc := range []struct {
		name string
		b    []byte
		gen  uint64
		want func(error) bool
	}{
		{"good", good, 3, func(err error) bool { return err == nil }},
		{"flipped bit", flipped, 3, isDamage},
		{"cut short", good[:len(good)-1], 3, isDamage},
		{"header only", good[:10], 3, isDamage},
		{"another generation", good, 4, isDamage},
		{"not msgpack", notMsgpack, 3, func(err error) bool {
			return err != nil && !isDamage(err) && strings.Contains(err.Error(), "does not decode")
		}},
		{"a state version the engine rejects", newerState, 3, func(err error) bool {
			var ee *engine.Error
			return errors.As(err, &ee)
		}},
	} {
		path := filepath.Join(t.TempDir(), snapshotName(tc.gen))
		if err := os.WriteFile(path, tc.b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := restoreSnapshot(engine.New(engine.Config{}), path, tc.gen); !tc.want(err) {
			t.Errorf("%s: restoreSnapshot = %v", tc.name, err)
		}
	}
}

func isDamage(err error) bool {
	var d *DamageError
	return errors.As(err, &d)
}
