package store

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/klockd/klock/daemon/engine"
)

// Compaction never holds the engine mutex for long. A small state (at most
// copyStateMax agents + leases, a copy of well under a millisecond) is
// copied with engine.Snapshot in the Append that rotates, which runs under
// the engine mutex anyway. A larger one is never copied: the state at any
// record boundary is the last snapshot plus the logs written since, and a
// background goroutine rebuilds it from those files.
//
//  1. Ahead of time (when the log is half way to the limit), the maintenance
//     goroutine creates log.<gen+1> with its header, fsyncs it and the
//     directory (prepareNext).
//  2. An Append that finds the log larger than both CompactMinBytes and the
//     last snapshot rotates at a boundary between two operations' records:
//     frames pending so far stay bound to the old log, later ones go to the
//     new one (rotateLocked). No I/O; for a small state, the copy.
//  3. The maintenance goroutine completes the old log (written, fsynced,
//     closed), then, unless it has the copy, loads the last snapshot into a
//     private engine and replays the logs up to the old one; it writes
//     snapshot.<gen+1>.tmp, fsyncs, renames, fsyncs the directory and
//     deletes the files it replaces (compact). Replaying also proves the
//     logs readable: damage is logged at once rather than found at the next
//     start.
//
// A crash at any point leaves a directory recovery reads correctly: before
// the rename, the previous snapshot plus the old and the new log; after it,
// the new snapshot plus the new log (older files are ignored and removed).

// maybeCompactLocked starts a compaction when it is due. Called by Append
// with s.mu held.
func (s *Store) maybeCompactLocked() {
	if s.compacting || s.closed || s.err != nil || s.opts.CompactMinBytes < 0 {
		return
	}
	limit := max(s.opts.CompactMinBytes, s.snapBytes)
	if s.next == nil {
		// Have the next log ready by the time it is needed.
		if s.logBytes > limit/2 {
			s.signalLocked()
		}
		return
	}
	if s.logBytes <= limit {
		return
	}
	var state *engine.State
	if s.eng != nil {
		if st := s.eng.Stats(); st.Agents+st.Leases <= copyStateMax {
			state = s.eng.Snapshot()
		}
	}
	s.rotateLocked(state)
}

// copyStateMax is the largest state (agents + leases) compaction copies
// under the engine mutex rather than rebuilding it from the files.
const copyStateMax = 5000

// rotateLocked switches appends to the pre-created next log and asks the
// maintenance goroutine to snapshot the state at this point: state when the
// caller copied it, else rebuilt from the files. Called with s.mu held,
// between two Appends; does no I/O.
func (s *Store) rotateLocked(state *engine.State) {
	s.compactState = state
	s.old, s.oldPending, s.oldEnd, s.oldUpto = s.file, s.pending, s.fileEnd, s.appended
	s.pending = nil
	s.file, s.next = s.next, nil
	s.compactThrough = s.gen
	s.gen++
	s.fileEnd, s.logBytes = logHeaderSize, logHeaderSize
	s.compacting = true
	s.signalLocked()
}

// Compact forces a compaction now, as if the log had outgrown the snapshot,
// and waits until the snapshot is durable (after any compaction already
// running). The store must have been started (Start). The daemon compacts
// on its own; this is for tests and tools.
func (s *Store) Compact() error {
	for {
		if err := s.prepareNextNow(); err != nil {
			return err
		}
		s.mu.Lock()
		started := false
		if !s.compacting && s.next != nil && s.err == nil && !s.closed {
			s.rotateLocked(nil) // no engine mutex here: rebuild from the files
			started = true
		}
		// Wait for this compaction, or for the one already running before
		// starting another.
		for s.compacting && s.err == nil {
			s.cond.Wait()
		}
		err := s.err
		if err == nil && s.closed {
			err = ErrClosed
		}
		failed := s.compactErr
		s.mu.Unlock()
		if err != nil {
			return err
		}
		if started {
			return failed
		}
	}
}

// prepareNext pre-creates the next log if none is ready, at most once a
// second after a failure. Runs on the maintenance goroutine.
func (s *Store) prepareNext() {
	s.mu.Lock()
	skip := s.next != nil || s.closed || s.err != nil || s.opts.CompactMinBytes < 0 || time.Since(s.nextFailed) < time.Second
	s.mu.Unlock()
	if skip {
		return
	}
	if err := s.prepareNextNow(); err != nil {
		s.log.Warn("klock: cannot prepare the next log; compaction postponed", "dir", s.dir, "err", err)
		s.mu.Lock()
		s.nextFailed = time.Now()
		s.mu.Unlock()
	}
}

// prepareNextNow creates, fsyncs and installs log.<gen+1> unless it exists.
// prepMu keeps two callers from creating (and truncating) the same file;
// gen may still advance meanwhile, which the install re-checks.
func (s *Store) prepareNextNow() error {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	s.mu.Lock()
	if s.next != nil {
		s.mu.Unlock()
		return nil
	}
	gen := s.gen + 1
	s.mu.Unlock()
	f, err := createLog(s.dir, gen)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next != nil || s.gen+1 != gen || s.closed {
		f.Close()
		return nil
	}
	s.next = f
	return nil
}

// createLog creates log.<gen> holding only its header, fsynced together with
// the directory entry, and returns it open for appending.
func createLog(dir string, gen uint64) (*os.File, error) {
	path := filepath.Join(dir, logName(gen))
	f, err := createFile(path, os.O_APPEND)
	if err != nil {
		return nil, fmt.Errorf("klock: creating log: %w", err)
	}
	if err := writeAll(f, appendLogHeader(nil, gen)); err != nil {
		f.Close()
		return nil, err
	}
	if err := syncFile(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// compact writes the snapshot of the state at the end of the log the last
// rotation closed, if any. Runs on the maintenance goroutine.
func (s *Store) compact() {
	s.mu.Lock()
	through, base, state := s.compactThrough, s.baseGen, s.compactState
	if through == 0 {
		s.mu.Unlock()
		return
	}
	s.compactThrough, s.compactState = 0, nil
	// The old log must be complete and fsynced before the snapshot that
	// replaces it exists, and before anything lands in the new log.
	s.drainOldLocked()
	if s.err != nil {
		// A fault: the copied state may hold changes that were never
		// written. Healing writes the snapshot instead.
		s.compacting = false
		s.cond.Broadcast()
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()

	start := time.Now()
	gen := through + 1
	var src stateSource
	var err error
	rebuilt := state == nil
	if rebuilt {
		var eng *engine.Engine
		if eng, err = rebuildEngine(s.dir, base, through); err == nil {
			src = streamedState(eng)
		}
	} else {
		src = copiedState(state)
	}
	unreadable := err != nil
	var size int64
	if err == nil {
		size, err = saveSnapshot(s.dir, gen, src)
	}
	if err == nil {
		removeBefore(s.dir, gen, s.log)
	}
	leases := src.n
	if rebuilt {
		// The engine the state was rebuilt in (which held every lease the
		// logs granted, though it may end with few: after a big release,
		// say) is garbage now: hand that memory back to the kernel rather
		// than keep it mapped until the runtime gets round to it. Rebuilds
		// happen only for a state too large to copy (copyStateMax), at
		// most once a log's worth (CompactMinBytes) of appends.
		src = stateSource{}
		debug.FreeOSMemory()
	}
	switch {
	case unreadable:
		s.log.Error("klock: compaction failed; automatic compaction is off until restart", "dir", s.dir, "err", err)
	case err != nil:
		// The logs stay as they are; the next rotation, a log's worth
		// later, snapshots them all.
		s.log.Warn("klock: writing a snapshot failed; compaction postponed", "dir", s.dir, "err", err)
	default:
		s.log.Debug("klock: snapshot written", "file", snapshotName(gen), "bytes", size, "leases", leases, "took", time.Since(start))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.compacting = false
	s.compactErr = err
	if err == nil {
		s.snapBytes, s.baseGen = size, gen
	} else if unreadable {
		// Replaying would fail the same way; the log keeps growing and the
		// operator is told now, not at the next start.
		s.opts.CompactMinBytes = -1
	}
	s.cond.Broadcast()
}

// rebuildState replays snapshot.<base> (none when base is 0) and the logs
// from it through log.<through> into a private engine and returns its state.
func rebuildState(dir string, base, through uint64) (*engine.State, error) {
	eng, err := rebuildEngine(dir, base, through)
	if err != nil {
		return nil, err
	}
	return eng.Snapshot(), nil
}

// rebuildEngine replays snapshot.<base> (none when base is 0) and the logs
// from it through log.<through> into a private engine and returns it.
func rebuildEngine(dir string, base, through uint64) (*engine.Engine, error) {
	eng := engine.New(engine.Config{})
	first := uint64(1)
	if base > 0 {
		path := filepath.Join(dir, snapshotName(base))
		if _, err := restoreSnapshot(eng, path, base); err != nil {
			return nil, fmt.Errorf("klock: compaction cannot restore %s: %w", path, err)
		}
		first = base
	}
	for g := first; g <= through; g++ {
		path := filepath.Join(dir, logName(g))
		if _, _, err := replayLog(eng, path, g); err != nil {
			return nil, fmt.Errorf("klock: compaction cannot replay %s (the next start would fail the same way): %w", path, err)
		}
	}
	return eng, nil
}

// saveSnapshot writes snapshot.<gen> atomically: temp file, fsync, rename,
// fsync of the directory. It returns the file's size.
func saveSnapshot(dir string, gen uint64, src stateSource) (int64, error) {
	final := filepath.Join(dir, snapshotName(gen))
	tmp := final + ".tmp"
	f, err := createFile(tmp, 0)
	if err != nil {
		return 0, fmt.Errorf("klock: creating snapshot: %w", err)
	}
	size, werr := writeSnapshot(f, gen, src)
	if werr == nil {
		werr = syncFile(f)
	}
	if cerr := f.Close(); werr == nil && cerr != nil {
		werr = fmt.Errorf("klock: closing %s: %w", tmp, cerr)
	}
	if werr != nil {
		os.Remove(tmp)
		return 0, werr
	}
	err = injectedFault(ioRename, final)
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("klock: installing snapshot %s: %w", final, err)
	}
	if err := syncDir(dir); err != nil {
		return 0, err
	}
	return size, nil
}

// removeBefore deletes snapshots and logs older than gen, which the
// snapshot of gen has replaced. Failures only cost disk space.
func removeBefore(dir string, gen uint64, log interface {
	Warn(string, ...any)
}) {
	files, err := listState(dir)
	if err != nil {
		log.Warn("klock: cannot list state directory to remove old files", "dir", dir, "err", err)
		return
	}
	for _, f := range files {
		if f.gen < gen && (f.kind == kindLog || f.kind == kindSnapshot) {
			if err := os.Remove(filepath.Join(dir, f.name)); err != nil {
				log.Warn("klock: cannot remove replaced file", "file", f.name, "err", err)
			}
		}
	}
}

// createFile creates (or truncates) path for writing, mode 0600, with the
// extra open flags.
func createFile(path string, flags int) (*os.File, error) {
	if err := injectedFault(ioCreate, path); err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|flags, 0o600)
}
