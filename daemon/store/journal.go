package store

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/klockd/klock/daemon/engine"
)

// ErrClosed is returned by Wait after Close.
var ErrClosed = errors.New("klock: store closed")

// Append encodes recs (the records of one operation, in engine order) into
// the pending buffer and returns the sequence number to pass to Wait. It
// does no I/O. With no records it returns the sequence of the last append,
// so a reply that merely observed other operations' effects still waits
// until they are written.
//
// Append must be called while holding the engine's mutex, after every
// engine call, so that records reach the log in the engine's order. When the
// log has outgrown the last snapshot it switches to the next log file there
// (no I/O; see compact.go).
func (s *Store) Append(recs []engine.Record) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(recs) == 0 {
		return s.appended
	}
	if s.err != nil {
		// Nothing will be written any more: Wait reports s.err for this
		// sequence, and the buffer must not grow without bound meanwhile.
		s.appended++
		return s.appended
	}
	before := len(s.pending)
	defer func() {
		if r := recover(); r != nil {
			// A bug while encoding: no part of this operation may reach
			// the log. The server stops on this panic (server/panic.go).
			s.pending = s.pending[:before]
			panic(r)
		}
	}()
	for i := range recs {
		r := recs[i]
		// A removal of many leases (expiry after a long stop) is split so
		// that every record stays small; replaying the parts in order is
		// the same state change.
		for len(r.LeaseIDs) > maxIDsPerRecord && splittable(r.Kind) {
			part := r
			part.LeaseIDs = r.LeaseIDs[:maxIDsPerRecord]
			s.encodeLocked(&part)
			r.LeaseIDs = r.LeaseIDs[maxIDsPerRecord:]
		}
		s.encodeLocked(&r)
	}
	s.logBytes += int64(len(s.pending) - before)
	s.appended++
	s.maybeCompactLocked()
	return s.appended
}

// maxIDsPerRecord bounds the lease ids in one record (see Append).
const maxIDsPerRecord = 4096

// splittable reports whether a record of kind k may be split by its
// LeaseIDs: each id is removed on its own.
func splittable(k engine.RecordKind) bool {
	return k == engine.RecExpire || k == engine.RecRelease || k == engine.RecRevoke || k == engine.RecProcessEnd
}

// encodeLocked appends one record frame to the pending buffer, encoding
// the body in place behind a frame header filled in afterwards.
func (s *Store) encodeLocked(r *engine.Record) {
	start := len(s.pending)
	if fastEncode {
		s.pending = appendRecord(append(s.pending, make([]byte, frameHeaderSize)...), r)
	} else {
		s.encBuf.Reset()
		if err := s.enc.Encode(r); err != nil {
			s.failLocked(fmt.Errorf("klock: encoding a kind %d record: %w", r.Kind, err))
			return
		}
		s.pending = append(append(s.pending, make([]byte, frameHeaderSize)...), s.encBuf.Bytes()...)
	}
	if n := len(s.pending) - start - frameHeaderSize; n > MaxRecordSize {
		s.pending = s.pending[:start]
		s.failLocked(fmt.Errorf("klock: a kind %d record of %d bytes exceeds the %d-byte limit", r.Kind, n, MaxRecordSize))
		return
	}
	sealFrame(s.pending[start:])
}

// Wait returns once every record up to seq has been written with write(2),
// and fsynced when the mode is FsyncAlways. It returns the store's error if
// a write or fsync failed (the store then refuses all later work: what is on
// disk may no longer match the engine), or ErrClosed after Close.
//
// Group commit: the first waiter to find nobody writing becomes the writer
// for everything pending, in one write(2); the others wait for it and find
// their records written when it finishes, or write what piled up meanwhile
// in the next round. No goroutine hand-off happens for a lone client.
//
// The writer does not yield first to let more records join: on this 2-CPU
// VM a yield moves the goroutine to another thread, which costs more than
// the write (klock-bench, everysec at W=1: 0.6-0.7 of in-memory with the
// yield, 0.9 without; at W=64 no worse).
func (s *Store) Wait(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.written >= seq {
			return nil
		}
		if s.err != nil {
			return s.err
		}
		if s.writing {
			s.cond.Wait()
			continue
		}
		s.leadLocked()
	}
}

// drainOldLocked finishes a log rotation: it writes what was pending for the
// old log, fsyncs and closes it, even if no waiter asked for it.
func (s *Store) drainOldLocked() {
	for s.old != nil && s.err == nil {
		if s.writing {
			s.cond.Wait()
			continue
		}
		s.leadLocked()
	}
}

// leadLocked makes the caller the writer for one round: it takes everything
// pending, writes it outside the lock, then publishes the new written mark.
// Called with s.mu held and s.writing false; returns with s.mu held.
func (s *Store) leadLocked() {
	s.writing = true
	upto := s.appended
	buf := s.pending
	s.pending = s.spare[:0]
	old, oldBuf := s.old, s.oldPending
	s.old, s.oldPending = nil, nil
	file := s.file
	s.mu.Unlock()

	err := s.writeRound(old, oldBuf, file, buf)

	s.mu.Lock()
	s.spare = buf[:0]
	s.writing = false
	if err != nil {
		s.failLocked(err)
	} else {
		if len(buf) > 0 {
			s.writes++
		}
		s.written = upto
		if len(buf) > 0 {
			s.dirty = true
		}
	}
	s.cond.Broadcast()
}

// writeRound does the I/O of one writer round. A rotation's old log is
// completed and fsynced before anything reaches the new one, so the logs
// on disk never have a gap, whatever the fsync mode.
func (s *Store) writeRound(old *os.File, oldBuf []byte, file *os.File, buf []byte) error {
	if old != nil {
		if err := writeAll(old, oldBuf); err != nil {
			return err
		}
		if err := old.Sync(); err != nil {
			return fmt.Errorf("klock: fsync %s: %w", old.Name(), err)
		}
		if err := old.Close(); err != nil {
			return fmt.Errorf("klock: closing %s: %w", old.Name(), err)
		}
	}
	if len(buf) == 0 {
		return nil
	}
	if file == nil {
		return errors.New("klock: store used before Recover opened its log")
	}
	if err := writeAll(file, buf); err != nil {
		return err
	}
	if s.opts.Fsync == FsyncAlways {
		if err := unix.Fdatasync(int(file.Fd())); err != nil {
			return fmt.Errorf("klock: fdatasync %s: %w", file.Name(), err)
		}
	}
	return nil
}

// writeAll writes b with as few write(2) calls as the kernel allows (one,
// for a regular file, unless the disk is full).
func writeAll(f *os.File, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("klock: writing %s: %w", f.Name(), err)
	}
	return nil
}

// failLocked makes err the store's sticky error and wakes every waiter.
func (s *Store) failLocked(err error) {
	if s.err == nil {
		s.err = err
		s.log.Error("klock: the state log can no longer be written; mutations are refused", "dir", s.dir, "err", err)
	}
	s.cond.Broadcast()
}

// syncLog fsyncs the current log if anything was written since the last
// fsync (FsyncEverySec, once a second, from syncEverySec).
func (s *Store) syncLog() {
	s.mu.Lock()
	if !s.dirty || s.err != nil || s.file == nil {
		s.mu.Unlock()
		return
	}
	s.dirty = false
	f := s.file
	s.mu.Unlock()
	// fsync runs beside writers, as in Redis: write(2) and fsync(2) on one
	// file may overlap. A rotation may close f meanwhile; the old log was
	// fsynced by the rotation itself, so ErrClosed is harmless.
	// (*os.File).Sync is used rather than fdatasync on the raw descriptor
	// because it is safe against that concurrent Close.
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
		s.mu.Lock()
		s.failLocked(fmt.Errorf("klock: fsync %s: %w", f.Name(), err))
		s.mu.Unlock()
	}
}
