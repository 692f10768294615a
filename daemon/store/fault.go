package store

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klockd/klock/daemon/engine"
)

// When a write, fsync or rename fails (ENOSPC, EIO, EROFS), the store does
// not give up for good. It enters a fault:
//
//   - The failed round's bytes are cut off the log again (ftruncate), so the
//     files hold exactly the records written before it: what a restart, or
//     DurableState, would load. If they cannot be cut (a second error), the
//     fault is Fatal: only a restart can tell what the log holds.
//   - Wait reports an *UnavailableError for every sequence not written
//     (those of the failed round, and any Append made during the fault),
//     now and after healing: they were never written and never will be.
//   - The owner of the engine rolls it back to DurableState, refuses changes
//     while the fault lasts, and calls Heal about once a second with a
//     snapshot of its state. Heal writes that snapshot and a fresh log (a new
//     generation, so nothing is ever appended after a torn write) and ends
//     the fault.

// Fault says why the store cannot make changes durable.
type Fault struct {
	Err   error     // the failed operation, naming the file and the errno
	Since time.Time // when the fault began
	// Epoch numbers the store's faults: 1 for the first, 2 for the next.
	Epoch uint64
	// Durable is the last sequence written before the fault: every later
	// sequence handed out by Append until the fault heals is lost.
	Durable uint64
	// Fatal says the failed round could not be cut off the log: the files
	// may hold records that were never acknowledged, so the state must be
	// recovered by a restart rather than by DurableState and Heal.
	Fatal bool
}

// Reason is the fault in a few words for humans: the errno name and the
// error, e.g. "ENOSPC: writing /var/lib/klock/log.00..01: no space left on
// device".
func (f *Fault) Reason() string {
	msg := strings.TrimPrefix(f.Err.Error(), "klock: ")
	var errno syscall.Errno
	if errors.As(f.Err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name + ": " + msg
		}
	}
	return msg
}

// UnavailableError is what Wait returns for a sequence that was not written
// because of a fault: the records are not on disk and never will be.
type UnavailableError struct {
	Fault *Fault
}

// Error says that nothing was made durable, and why.
func (e *UnavailableError) Error() string {
	return "klock: cannot make state changes durable (" + e.Fault.Reason() + ")"
}

// Unwrap returns the underlying I/O error.
func (e *UnavailableError) Unwrap() error { return e.Fault.Err }

// lostRange is a run of sequences a healed fault never wrote.
type lostRange struct {
	from, to uint64
	fault    *Fault
}

// Fault returns the store's current fault, or nil when changes can be made
// durable. It takes no lock: the server calls it before every change.
func (s *Store) Fault() *Fault { return s.fault.Load() }

// enterFaultLocked starts a fault for err unless one is on. Called with s.mu
// held, after a failed round has been cut off (fatal: it could not be).
func (s *Store) enterFaultLocked(err error, fatal bool) {
	if s.err != nil {
		return
	}
	s.epoch++
	f := &Fault{Err: err, Since: time.Now(), Epoch: s.epoch, Durable: s.written, Fatal: fatal}
	s.err = &UnavailableError{Fault: f}
	s.fault.Store(f)
	s.log.Debug("klock: the store cannot make changes durable", "dir", s.dir, "err", err, "fatal", fatal)
	s.cond.Broadcast()
	if s.opts.OnFault != nil {
		go s.opts.OnFault()
	}
	if s.onRound != nil {
		// Answers left to a writer round that will not come are answered
		// by their connections, which then learn of the fault.
		go s.onRound(true)
	}
}

// lostLocked returns the error for seq if a healed fault lost it.
func (s *Store) lostLocked(seq uint64) error {
	for i := len(s.lost) - 1; i >= 0; i-- {
		if r := &s.lost[i]; seq >= r.from && seq <= r.to {
			return &UnavailableError{Fault: r.fault}
		}
	}
	return nil
}

// cutBack truncates f to end after a failed round, so that it holds only
// what was written before. It reports whether f now ends at end.
func cutBack(f *os.File, end int64) bool {
	if f == nil {
		return true
	}
	if err := injectedFault(ioTruncate, f.Name()); err == nil {
		if f.Truncate(end) == nil {
			return true
		}
	}
	fi, err := f.Stat()
	return err == nil && fi.Size() == end
}

// DurableState returns the engine state the files hold: the last snapshot
// plus the logs, which the fault cut back to what was written. It waits for
// a compaction in progress. It fails when there is no fault, when the fault
// is Fatal, or when the files cannot be read.
func (s *Store) DurableState() (*engine.State, error) {
	s.mu.Lock()
	for s.compacting || s.writing {
		s.cond.Wait()
	}
	f := s.fault.Load()
	base, gen := s.baseGen, s.gen
	s.mu.Unlock()
	switch {
	case f == nil:
		return nil, errors.New("klock: DurableState called without a fault")
	case f.Fatal:
		return nil, fmt.Errorf("klock: the log could not be cut back after a failed write; restart klockd to recover its state: %w", f.Err)
	}
	return rebuildState(s.dir, base, gen)
}

// Heal ends the fault if the disk takes writes again: it writes state (the
// engine's state, which must be DurableState or what it became by changes
// made since; none are while the owner refuses them) as the snapshot of a
// new generation, fsynced and renamed into place, creates that
// generation's log, switches appends to it and removes the older files.
// Sequences lost in the fault stay lost. It returns nil when there is no
// fault, the error that prevents healing otherwise (the fault stays on), or
// ErrClosed.
func (s *Store) Heal(state *engine.State) error {
	s.prepMu.Lock() // no next log is being created meanwhile
	defer s.prepMu.Unlock()
	s.mu.Lock()
	f := s.fault.Load()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if f == nil {
		s.mu.Unlock()
		return nil
	}
	if f.Fatal {
		s.mu.Unlock()
		return fmt.Errorf("klock: cannot heal: %w", f.Err)
	}
	for s.compacting || s.writing {
		s.cond.Wait()
	}
	gen := s.gen + 1
	if s.next != nil {
		s.next.Close() // created ahead for gen; made again below
		s.next = nil
	}
	s.mu.Unlock()

	size, err := saveSnapshot(s.dir, gen, copiedState(state))
	if err != nil {
		return err
	}
	file, err := createLog(s.dir, gen)
	if err != nil {
		return err
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		file.Close()
		return ErrClosed
	}
	for _, old := range []*os.File{s.file, s.old} {
		if old != nil {
			old.Close()
		}
	}
	s.file, s.old, s.oldPending, s.pending = file, nil, nil, s.pending[:0]
	s.gen, s.fileEnd, s.logBytes = gen, logHeaderSize, logHeaderSize
	s.baseGen, s.snapBytes = gen, size
	s.compactThrough, s.compactState, s.compactErr = 0, nil, nil
	if s.appended > f.Durable {
		s.lost = append(s.lost, lostRange{from: f.Durable + 1, to: s.appended, fault: f})
		s.hasLost.Store(true)
	}
	s.setWrittenLocked(s.appended)
	s.dirty = false
	s.err = nil
	s.fault.Store(nil)
	s.cond.Broadcast()
	s.mu.Unlock()

	removeBefore(s.dir, gen, s.log)
	return nil
}

// Test-only fault injection: the store asks injectedFault before each
// operation that writes to the state directory, and fails it with the
// error returned. A failed write first writes half of its bytes, as a disk
// that fills up mid-write does.

// ioOp names a kind of operation that writes.
type ioOp string

const (
	ioCreate   ioOp = "create"   // creating a log, or a snapshot's temporary file
	ioWrite    ioOp = "write"    // write(2) to a log or snapshot
	ioSync     ioOp = "fsync"    // fsync or fdatasync of a log, snapshot or the directory
	ioRename   ioOp = "rename"   // installing a snapshot
	ioTruncate ioOp = "truncate" // cutting a failed round off a log
)

// faultInjector, when set, decides the fate of each operation.
var faultInjector atomic.Pointer[func(op ioOp, path string) error]

// injectedFault returns the injected error for op on path, if any.
func injectedFault(op ioOp, path string) error {
	if f := faultInjector.Load(); f != nil {
		return (*f)(op, path)
	}
	return nil
}
