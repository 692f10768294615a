package store

import (
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klockd/klock/daemon/engine"
)

// inject makes every operation op on a path containing pathPart fail with
// errno, until the returned function (also run at cleanup) is called.
func inject(t *testing.T, op ioOp, pathPart string, errno syscall.Errno) (stop func()) {
	t.Helper()
	f := func(o ioOp, path string) error {
		if o == op && strings.Contains(path, pathPart) {
			return errno
		}
		return nil
	}
	faultInjector.Store(&f)
	stop = func() { faultInjector.Store(nil) }
	t.Cleanup(stop)
	return stop
}

// freeze is a state change of one record.
func freeze(path string) func(e *engine.Engine, now int64) error {
	return func(e *engine.Engine, now int64) error {
		_, _, err := e.Freeze(now, root, "FILE", path)
		return err
	}
}

// mustUnavailable fails unless err is an *UnavailableError whose reason
// names errno.
func mustUnavailable(t *testing.T, what string, err error, errno string) {
	t.Helper()
	var ue *UnavailableError
	if !errors.As(err, &ue) || !strings.Contains(ue.Error(), errno) {
		t.Fatalf("%s = %v; want an *UnavailableError naming %s", what, err, errno)
	}
}

// rollback does what the server does on a fault: it replaces the engine's
// state with DurableState.
func (w *world) rollback() {
	w.tb.Helper()
	st, err := w.st.DurableState()
	if err != nil {
		w.tb.Fatalf("DurableState: %v", err)
	}
	w.lock(func() {
		if err := w.eng.Restore(st); err != nil {
			w.tb.Fatal(err)
		}
	})
}

// TestFailedLogWriteIsUndone: a write (half done, as on a full disk) or
// fdatasync of the log that fails is cut off the file again; the change is
// reported unavailable, now and after healing; the files hold exactly the
// changes written before; healing writes a snapshot and a new log; and a
// restart finds every change acknowledged and none other.
func TestFailedLogWriteIsUndone(t *testing.T) {
	for _, tc := range []struct {
		name  string
		op    ioOp
		fsync FsyncMode
		errno syscall.Errno
	}{
		{"write ENOSPC", ioWrite, FsyncEverySec, syscall.ENOSPC},
		{"write EIO", ioWrite, FsyncAlways, syscall.EIO},
		{"fdatasync EIO", ioSync, FsyncAlways, syscall.EIO},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w := newWorld(t, dir, Options{Fsync: tc.fsync})
			w.populate(20)
			before := w.snapshot()
			log := currentLog(t, dir)
			size := fileSize(t, log)

			stop := inject(t, tc.op, "log.", tc.errno)
			errno := map[syscall.Errno]string{syscall.ENOSPC: "ENOSPC", syscall.EIO: "EIO"}[tc.errno]
			mustUnavailable(t, "the change during the fault", w.do(freeze("/lost")), errno)
			f := w.st.Fault()
			if f == nil || f.Fatal || f.Epoch != 1 {
				t.Fatalf("Fault() = %+v; want epoch 1, not fatal", f)
			}
			if got := fileSize(t, log); got != size {
				t.Fatalf("log is %d bytes after the failed round; want it cut back to %d", got, size)
			}
			// Appends during the fault are lost too.
			mustUnavailable(t, "a change after the fault", w.do(freeze("/lost2")), errno)
			w.rollback()
			sameState(t, w.snapshot(), before)

			stop()
			if err := w.st.Heal(w.snapshot()); err != nil {
				t.Fatalf("Heal = %v", err)
			}
			if f := w.st.Fault(); f != nil {
				t.Fatalf("Fault() after Heal = %+v; want nil", f)
			}
			mustUnavailable(t, "Wait for a lost sequence after healing", w.st.Wait(f.Durable+1), errno)
			w.must(freeze("/after"))
			want := w.snapshot()
			w.close()

			w2 := newWorld(t, dir, Options{})
			sameState(t, w2.snapshot(), want)
			if !strings.Contains(w2.logs.String(), "snapshot="+snapshotName(2)) {
				t.Errorf("recovery did not start from the heal's snapshot:\n%s", w2.logs.String())
			}
		})
	}
}

// TestFailedFsyncEverySecKeepsWhatWasAcknowledged: the once-a-second fsync
// failing starts a fault but loses nothing: every change was acknowledged
// after its write, and healing writes them all again, fsynced.
func TestFailedFsyncEverySecKeepsWhatWasAcknowledged(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{Fsync: FsyncEverySec})
	w.populate(10)
	want := w.snapshot()
	inject(t, ioSync, "log.", syscall.EIO)
	w.st.syncLog()
	f := w.st.Fault()
	if f == nil || f.Durable != w.st.appended {
		t.Fatalf("Fault() after a failed fsync = %+v; want one with every append (%d) durable", f, w.st.appended)
	}
	mustUnavailable(t, "a change during the fault", w.do(freeze("/lost")), "EIO")
	w.rollback()
	sameState(t, w.snapshot(), want)
	faultInjector.Store(nil)
	if err := w.st.Heal(w.snapshot()); err != nil {
		t.Fatal(err)
	}
	w.close()
	sameState(t, newWorld(t, dir, Options{}).snapshot(), want)
}

// TestHealFailsUntilTheDiskRecovers: every step of healing that writes
// (creating, writing, fsyncing or renaming the snapshot, creating the log)
// failing leaves the fault on and the files as they were; the next try
// heals.
func TestHealFailsUntilTheDiskRecovers(t *testing.T) {
	for _, tc := range []struct {
		op   ioOp
		path string
	}{
		{ioCreate, "snapshot."}, {ioWrite, "snapshot."}, {ioSync, "snapshot."}, {ioRename, "snapshot."},
		{ioCreate, "log."}, {ioWrite, "log."}, {ioSync, "log."},
	} {
		t.Run(string(tc.op)+" "+tc.path, func(t *testing.T) {
			dir := t.TempDir()
			w := newWorld(t, dir, Options{})
			w.populate(5)
			want := w.snapshot()
			stop := inject(t, ioWrite, "log.", syscall.ENOSPC)
			mustUnavailable(t, "change", w.do(freeze("/lost")), "ENOSPC")
			stop()
			w.rollback()
			inject(t, tc.op, tc.path, syscall.ENOSPC)
			if err := w.st.Heal(w.snapshot()); err == nil || w.st.Fault() == nil {
				t.Fatalf("Heal with %s failing on %s = %v, fault %v; want an error and the fault on", tc.op, tc.path, err, w.st.Fault())
			}
			if ents, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(ents) > 0 {
				t.Errorf("a failed heal left %v", ents)
			}
			faultInjector.Store(nil)
			if err := w.st.Heal(w.snapshot()); err != nil {
				t.Fatalf("Heal after the disk recovered = %v", err)
			}
			w.must(freeze("/after"))
			want2 := w.snapshot()
			w.close()
			got := newWorld(t, dir, Options{}).snapshot()
			sameState(t, got, want2)
			if len(want2.Frozen) != len(want.Frozen)+1 {
				t.Fatalf("frozen %v after healing; want %v plus /after", want2.Frozen, want.Frozen)
			}
		})
	}
}

// TestFaultThatCannotBeCutIsFatal: when the failed round cannot be cut off
// the log, the fault is fatal: neither DurableState nor Heal pretends to
// know what the files hold.
func TestFaultThatCannotBeCutIsFatal(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{})
	w.populate(3)
	f := func(o ioOp, path string) error {
		if o == ioWrite || o == ioTruncate {
			return syscall.EIO
		}
		return nil
	}
	faultInjector.Store(&f)
	t.Cleanup(func() { faultInjector.Store(nil) })
	mustUnavailable(t, "change", w.do(freeze("/lost")), "EIO")
	if ft := w.st.Fault(); ft == nil || !ft.Fatal {
		t.Fatalf("Fault() = %+v; want a fatal fault", ft)
	}
	if _, err := w.st.DurableState(); err == nil {
		t.Fatal("DurableState after a fatal fault succeeded")
	}
	if err := w.st.Heal(w.snapshot()); err == nil {
		t.Fatal("Heal after a fatal fault succeeded")
	}
}

// TestFailedRotationIsUndone: the rotation's old log failing to complete
// (its last write, or its fsync) cuts it back and abandons the compaction,
// whose copy of the state holds the change that was not written: a restart
// before healing, like DurableState, finds only what was written, and
// healing then works like after any failed write.
func TestFailedRotationIsUndone(t *testing.T) {
	for _, op := range []ioOp{ioWrite, ioSync} {
		t.Run(string(op), func(t *testing.T) {
			dir := t.TempDir()
			w := newWorld(t, dir, Options{})
			w.populate(5)
			want := w.snapshot()
			old := filepath.Join(dir, logName(1))
			size := fileSize(t, old)
			if err := w.st.prepareNextNow(); err != nil {
				t.Fatal(err)
			}
			inject(t, op, logName(1), syscall.EIO)
			// A change pending for the old log when the rotation happens,
			// with the state copied for the snapshot, as Append does.
			var seq uint64
			w.lock(func() {
				freeze("/pending")(w.eng, w.now+1)
				seq = w.st.Append(w.eng.Records())
				w.st.mu.Lock()
				w.st.rotateLocked(w.eng.Snapshot())
				w.st.mu.Unlock()
			})
			mustUnavailable(t, "Compact", w.st.Compact(), "EIO")
			mustUnavailable(t, "Wait for the pending change", w.st.Wait(seq), "EIO")
			if got := fileSize(t, old); got != size {
				t.Fatalf("old log is %d bytes; want it cut back to %d", got, size)
			}
			faultInjector.Store(nil)
			sameState(t, newWorld(t, copyDir(t, dir), Options{}).snapshot(), want)
			w.rollback()
			sameState(t, w.snapshot(), want)
			if err := w.st.Heal(w.snapshot()); err != nil {
				t.Fatal(err)
			}
			w.close()
			sameState(t, newWorld(t, dir, Options{}).snapshot(), want)
		})
	}
}

// TestAppendsDuringAFailedRoundAreLost: a change appended while the round
// that fails is being written is lost with it, though it never reached the
// file: neither healing nor a restart brings it back.
func TestAppendsDuringAFailedRoundAreLost(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, dir, Options{})
	w.populate(3)
	want := w.snapshot()
	var seq uint64
	f := func(o ioOp, path string) error {
		if o != ioWrite || seq != 0 {
			return nil
		}
		// Outside the store's lock, as a concurrent request would be.
		seq = w.st.Append([]engine.Record{{Kind: engine.RecFreeze, Time: baseTime, Resource: "FILE:/concurrent"}})
		return syscall.ENOSPC
	}
	faultInjector.Store(&f)
	t.Cleanup(func() { faultInjector.Store(nil) })
	mustUnavailable(t, "change", w.do(freeze("/lost")), "ENOSPC")
	faultInjector.Store(nil)
	mustUnavailable(t, "the concurrent change", w.st.Wait(seq), "ENOSPC")
	w.rollback()
	if err := w.st.Heal(w.snapshot()); err != nil {
		t.Fatal(err)
	}
	mustUnavailable(t, "the concurrent change after healing", w.st.Wait(seq), "ENOSPC")
	sameState(t, w.snapshot(), want)
	w.must(freeze("/after"))
	want = w.snapshot()
	w.close()
	sameState(t, newWorld(t, dir, Options{}).snapshot(), want)
}

// TestFailedCompactionIsRetried: a snapshot that cannot be written during
// compaction (create, write, fsync or rename failing) costs nothing but the
// snapshot: changes go on being written, no temporary file is left, and a
// later compaction succeeds.
func TestFailedCompactionIsRetried(t *testing.T) {
	for _, op := range []ioOp{ioCreate, ioWrite, ioSync, ioRename} {
		t.Run(string(op), func(t *testing.T) {
			dir := t.TempDir()
			w := newWorld(t, dir, Options{})
			w.populate(5)
			stop := inject(t, op, "snapshot.", syscall.ENOSPC)
			if err := w.st.Compact(); err == nil || !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("Compact with the snapshot's %s failing = %v; want ENOSPC", op, err)
			}
			if f := w.st.Fault(); f != nil {
				t.Fatalf("a failed compaction started a fault: %+v", f)
			}
			w.must(freeze("/still-written"))
			if ents, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(ents) > 0 {
				t.Errorf("a failed compaction left %v", ents)
			}
			stop()
			if err := w.st.Compact(); err != nil {
				t.Fatalf("Compact after the disk recovered = %v", err)
			}
			want := w.snapshot()
			w.close()
			sameState(t, newWorld(t, dir, Options{}).snapshot(), want)
		})
	}
}

// TestRecoverReportsAFailingDisk: recovery that cannot create its first
// log fails with an error naming the file and the errno.
func TestRecoverReportsAFailingDisk(t *testing.T) {
	inject(t, ioCreate, "log.", syscall.EROFS)
	_, err := openWorld(t, t.TempDir(), Options{})
	if err == nil || !strings.Contains(err.Error(), logName(1)) || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("Recover on a read-only disk = %v; want an error naming %s and EROFS", err, logName(1))
	}
}
