package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/daemon/engine"
)

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestAppendWaitSemantics(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{Fsync: FsyncAlways})
	log := filepath.Join(dir, logName(1))
	if seq := w.st.Append(nil); seq != 0 {
		t.Fatalf("Append(nil) on a fresh store = %d; want 0", seq)
	}
	if err := w.st.Wait(0); err != nil {
		t.Fatalf("Wait(0) = %v", err)
	}
	rec := []engine.Record{{Kind: engine.RecFreeze, Time: baseTime, Resource: "FILE:/a"}}
	s1 := w.st.Append(rec)
	s2 := w.st.Append(rec)
	if s1 != 1 || s2 != 2 {
		t.Fatalf("Append sequences = %d, %d; want 1, 2", s1, s2)
	}
	if seq := w.st.Append(nil); seq != s2 {
		t.Fatalf("Append(nil) after two appends = %d; want %d (a reply waits for what it observed)", seq, s2)
	}
	if got := fileSize(t, log); got != logHeaderSize {
		t.Fatalf("log is %d bytes before any Wait; Append must not write", got)
	}
	if err := w.st.Wait(s1); err != nil {
		t.Fatal(err)
	}
	// One writer round took everything pending: both records are written.
	full := fileSize(t, log)
	if err := w.st.Wait(s2); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, log); got != full || full <= logHeaderSize {
		t.Fatalf("log grew from %d to %d on Wait(%d); want both records written by the first round", full, got, s2)
	}
	w.close()
	if err := w.st.Wait(s2 + 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close = %v; want ErrClosed", err)
	}
}

func TestLockExclusive(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{})
	_, err := Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Open = %v; want an error naming %s and pid %d", err, dir, os.Getpid())
	}
	w.close()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after Close = %v", err)
	}
	st.Close()
}

func TestOpenRefusesEmptyDir(t *testing.T) {
	if _, err := Open("", Options{}); err == nil {
		t.Fatal(`Open("") succeeded; in-memory mode has no store`)
	}
}

func TestParseModes(t *testing.T) {
	for _, s := range []string{"always", "everysec", "never"} {
		m, err := ParseFsyncMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseFsyncMode(%q) = %v, %v", s, m, err)
		}
	}
	for _, s := range []string{"fail", "truncate"} {
		m, err := ParseRecoverMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseRecoverMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseFsyncMode("sometimes"); err == nil {
		t.Error("ParseFsyncMode accepted sometimes")
	}
	if _, err := ParseRecoverMode("ignore"); err == nil {
		t.Error("ParseRecoverMode accepted ignore")
	}
}

// churn runs workers goroutines each acquiring, heartbeating and
// releasing on its own paths, and returns the first error.
func churn(w *world, workers, rounds int) error {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			agent := fmt.Sprintf("worker-%d", g)
			if err := w.do(func(e *engine.Engine, now int64) error {
				_, err := e.Register(now, root, agent, int64(100+g), true)
				return err
			}); err != nil {
				errs <- err
				return
			}
			for i := range rounds {
				var id string
				err := w.do(func(e *engine.Engine, now int64) error {
					res, err := e.Acquire(now, root, engine.AcquireRequest{
						AgentID: agent, SessionID: "s", TTL: 3_600_000, Idem: fmt.Sprintf("%s-%d", agent, i),
						Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/%s/%d", agent, i%7), Predicate: "MUTATES"}},
					})
					if err == nil && res.Granted {
						id = res.Leases[0].ID
					}
					return err
				})
				if err == nil && id != "" {
					err = w.do(func(e *engine.Engine, now int64) error {
						_, err := e.Heartbeat(now, root, id, 0)
						return err
					})
				}
				if err == nil && id != "" && i%2 == 0 {
					err = w.do(func(e *engine.Engine, now int64) error {
						_, _, err := e.Release(now, root, id)
						return err
					})
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func TestGroupCommitConcurrent(t *testing.T) {
	for _, mode := range []FsyncMode{FsyncAlways, FsyncNever} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			w := newWorld(t, dir, Options{Fsync: mode, CompactMinBytes: -1})
			if err := churn(w, 32, 20); err != nil {
				t.Fatal(err)
			}
			want := w.snapshot()
			crashed := copyDir(t, dir) // as after kill -9: no Close
			sameState(t, newWorldClosed(t, crashed), want)
		})
	}
}

func TestCompactionWhileAppending(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{Fsync: FsyncEverySec, CompactMinBytes: 8 << 10})
	done := make(chan error, 1)
	go func() { done <- churn(w, 8, 150) }()
	// Forced compactions interleave with the churn (automatic ones run too,
	// when the log passes 8 KiB).
	for range 5 {
		if err := w.st.Compact(); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Let the last compaction finish before counting files.
	w.st.mu.Lock()
	for w.st.compacting {
		w.st.cond.Wait()
	}
	gen := w.st.gen
	w.st.mu.Unlock()
	if gen < 6 {
		t.Fatalf("log generation %d after churn; want several compactions", gen)
	}
	want := w.snapshot()
	crashed := copyDir(t, dir)
	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshot.*"))
	logs, _ := filepath.Glob(filepath.Join(dir, "log.*"))
	if len(snaps) != 1 || len(logs) > 2 {
		t.Errorf("after compactions: snapshots %v, logs %v; want one snapshot and at most two logs", snaps, logs)
	}
	sameState(t, newWorldClosed(t, crashed), want)
	w.close()
	sameState(t, newWorldClosed(t, dir), want)
}

func TestCompactionKeepsIdempotency(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{CompactMinBytes: -1})
	w.register("a", 5)
	acquire := func(w *world) engine.Lease {
		var l engine.Lease
		w.must(func(e *engine.Engine, now int64) error {
			res, err := e.Acquire(now, root, engine.AcquireRequest{
				AgentID: "a", SessionID: "s", TTL: 60_000, Idem: "key-1",
				Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: "/x", Predicate: "MUTATES"}},
			})
			if err != nil || !res.Granted {
				return fmt.Errorf("acquire: %v %+v", err, res)
			}
			l = res.Leases[0]
			return nil
		})
		return l
	}
	first := acquire(w)
	w.close()
	// From the log alone, then from a snapshot: a resent acquire gets the
	// same lease, never a second.
	w2 := newWorld(t, dir, Options{CompactMinBytes: -1})
	if again := acquire(w2); again.ID != first.ID || again.Fence != first.Fence {
		t.Fatalf("resent acquire after restart = %s/%d; want the same lease %s/%d", again.ID, again.Fence, first.ID, first.Fence)
	}
	if err := w2.st.Compact(); err != nil {
		t.Fatal(err)
	}
	w2.close()
	w3 := newWorld(t, dir, Options{})
	if again := acquire(w3); again.ID != first.ID || again.Fence != first.Fence {
		t.Fatalf("resent acquire after compaction + restart = %s/%d; want the same lease %s/%d", again.ID, again.Fence, first.ID, first.Fence)
	}
}

// TestCommitLeavesAnswersToTheRound: Commit callers that go on without
// waiting (the server's connections, daemon/server/answer.go) have every
// record written by some round, and OnRound is called after the round that
// wrote each, though nobody calls Wait.
func TestCommitLeavesAnswersToTheRound(t *testing.T) {
	w := newWorld(t, t.TempDir(), Options{Fsync: FsyncNever, CompactMinBytes: -1})
	var mu sync.Mutex
	owed := map[uint64]bool{} // sequences whose Commit returned false, until a round wrote them
	rounds := 0
	w.st.OnRound(func(failed bool) {
		if failed {
			t.Error("OnRound told of a fault")
		}
		mu.Lock()
		defer mu.Unlock()
		rounds++
		for seq := range owed {
			if w.st.Durable(seq) {
				delete(owed, seq)
			}
		}
	})
	const workers, each = 32, 50
	var wg sync.WaitGroup
	left := 0
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				var seq uint64
				w.lock(func() {
					seq = w.st.Append([]engine.Record{{Kind: engine.RecFreeze, Time: baseTime, Resource: fmt.Sprintf("FILE:/%d/%d", g, i)}})
				})
				mu.Lock()
				owed[seq] = true
				mu.Unlock()
				written, err := w.st.Commit(seq, g)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if written {
					delete(owed, seq)
				} else {
					left++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(owed)
		mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records left to a round were never written with OnRound told", n)
		}
		time.Sleep(time.Millisecond)
	}
	if !w.st.Durable(workers * each) {
		t.Fatalf("not every record is durable")
	}
	t.Logf("%d of %d Commit calls left their record to a round; %d rounds", left, workers*each, rounds)
}

// TestCommitBeforeStartLeads: without the writer goroutine (before Start),
// a Commit caller always leads the round itself.
func TestCommitBeforeStartLeads(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, Options{Fsync: FsyncNever})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Recover(engine.New(engine.Config{Journal: true})); err != nil {
		t.Fatal(err)
	}
	for i := range 40 { // past singlesToInline rounds of one record
		seq := st.Append([]engine.Record{{Kind: engine.RecFreeze, Time: baseTime, Resource: fmt.Sprintf("FILE:/%d", i)}})
		if written, err := st.Commit(seq, nil); !written || err != nil {
			t.Fatalf("Commit(%d) before Start = %v, %v; want written", seq, written, err)
		}
	}
}

// TestCommitOneCallerLeadsItsRounds: a caller whose rounds carry only its
// own records, several operations each (one connection whose client
// pipelines requests: klock-bench's klock-everysec), comes to lead its
// rounds itself, with no hand-off to the writer goroutine, which would
// batch nothing more and cost a wake-up per round.
func TestCommitOneCallerLeadsItsRounds(t *testing.T) {
	w := newWorld(t, t.TempDir(), Options{Fsync: FsyncNever, CompactMinBytes: -1})
	const rounds, ops = 60, 3
	var led []bool
	for i := range rounds {
		var seq uint64
		w.lock(func() {
			for j := range ops {
				seq = w.st.Append([]engine.Record{{Kind: engine.RecFreeze, Time: baseTime, Resource: fmt.Sprintf("FILE:/%d/%d", i, j)}})
			}
		})
		written, err := w.st.Commit(seq, "conn")
		if err != nil {
			t.Fatal(err)
		}
		if !written {
			if err := w.st.Wait(seq); err != nil {
				t.Fatal(err)
			}
		}
		led = append(led, written)
	}
	for i, written := range led[singlesToInline+4:] {
		if !written {
			t.Fatalf("Commit %d of one caller's rounds of %d operations was left to the writer goroutine (written at once: %v)", singlesToInline+4+i, ops, led)
		}
	}
}

// TestCommitSeveralCallersHandOff: once a round carries the records of
// several callers (they committed while another round was being written),
// Commit leaves the next rounds to the writer goroutine, which batches
// every ready connection's records (klock-conn-everysec).
func TestCommitSeveralCallersHandOff(t *testing.T) {
	var hold atomic.Bool
	inRound, release := make(chan struct{}), make(chan struct{})
	w := newWorld(t, t.TempDir(), Options{Fsync: FsyncNever, CompactMinBytes: -1, ObserveWrite: func(time.Duration) {
		if hold.CompareAndSwap(true, false) {
			inRound <- struct{}{}
			<-release
		}
	}})
	appendOne := func(name string) uint64 {
		var seq uint64
		w.lock(func() {
			seq = w.st.Append([]engine.Record{{Kind: engine.RecFreeze, Time: baseTime, Resource: "FILE:/" + name}})
		})
		return seq
	}
	commit := func(seq uint64, from string) bool {
		written, err := w.st.Commit(seq, from)
		if err != nil {
			t.Fatal(err)
		}
		if !written {
			if err := w.st.Wait(seq); err != nil {
				t.Fatal(err)
			}
		}
		return written
	}
	for i := range 2 * singlesToInline { // one caller: it comes to lead
		commit(appendOne(fmt.Sprint("x", i)), "x")
	}
	if !commit(appendOne("x-last"), "x") {
		t.Fatal("one caller's Commit after many rounds of its own records did not lead its round")
	}

	hold.Store(true)
	seq0 := appendOne("x-held")
	done := make(chan bool)
	go func() { done <- commit(seq0, "x") }() // leads; its round is held
	<-inRound
	seqA, seqB := appendOne("a"), appendOne("b")
	if written, err := w.st.Commit(seqA, "a"); written || err != nil {
		t.Fatalf("Commit(a) during another's round = %v, %v; want left to a round", written, err)
	}
	if written, err := w.st.Commit(seqB, "b"); written || err != nil {
		t.Fatalf("Commit(b) during another's round = %v, %v; want left to a round", written, err)
	}
	close(release)
	if !<-done {
		t.Fatal("the held round's caller did not lead it")
	}
	if err := w.st.Wait(seqB); err != nil {
		t.Fatal(err)
	}
	// The round that wrote a and b carried two callers' records.
	if written, err := w.st.Commit(appendOne("a-next"), "a"); written || err != nil {
		t.Fatalf("Commit after a round of two callers' records = %v, %v; want left to the writer goroutine", written, err)
	}
}
