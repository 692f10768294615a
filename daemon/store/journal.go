package store

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

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
		// A copy for the library, which keeps r on the heap: r itself is
		// Append's local, and must not escape, or every record of every
		// change would cost an allocation on the fast path too.
		rec := *r
		if err := s.enc.Encode(&rec); err != nil {
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
// and fsynced when the mode is FsyncAlways. It returns an
// *UnavailableError if the records were not written because of a fault
// (see fault.go): they never will be, even after the fault heals. It
// returns ErrClosed after Close.
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
	if len(s.lost) > 0 {
		if err := s.lostLocked(seq); err != nil {
			return err
		}
	}
	for {
		if s.written >= seq {
			s.leadOwedLocked(maxOwedRounds)
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

// Commit is Wait for a caller that does not wait: one whose answers the
// round that writes seq sends (OnRound). It reports whether every record
// up to seq is written now; otherwise a round that covers seq is under
// way or asked for. Its errors are Wait's. from names the caller's source
// of records (the server passes its connection), compared with ==.
//
// Who leads that round: while rounds carry the records of one caller each
// (one client, with one request or many pipelined on its connection), the
// caller itself, at once, as in Wait: no goroutine hand-off, which would
// batch nothing more. While they carry several callers' records (many
// clients), the writer goroutine (writeLoop), which first yields, so that
// the connections whose requests are ready append their records before
// the round and it carries them too (BENCHMARKS.md, "One connection per
// agent"). A caller that leads goes on leading while records that other
// callers went on without are pending, at most maxOwedRounds before the
// writer goroutine takes over, so that it is not kept long from its own
// connection.
func (s *Store) Commit(seq uint64, from any) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lost) > 0 {
		if err := s.lostLocked(seq); err != nil {
			return false, err
		}
	}
	if seq > s.owed {
		s.owed = seq
	}
	if seq > s.taken && from != s.lastFrom {
		// Records of one more caller wait for the next round.
		s.froms++
		s.lastFrom = from
	}
	if s.singles < singlesToInline && s.written < seq && s.err == nil && s.kickWriterLocked() {
		return false, nil
	}
	s.leadOwedLocked(maxOwedRounds)
	if s.written >= seq {
		return true, nil
	}
	return false, s.err
}

// singlesToInline is how many rounds in a row must carry one caller's
// records each before Commit callers lead rounds themselves again.
const singlesToInline = 16

// maxOwedRounds bounds the rounds one Commit caller leads in a row.
const maxOwedRounds = 4

// leadOwedLocked leads rounds while records some Commit caller went on
// without are pending and nobody else is writing, at most max (0: no
// bound) before handing over to the writer goroutine. The caller holds
// s.mu.
func (s *Store) leadOwedLocked(max int) {
	for n := 0; s.owed > s.written && !s.writing && s.err == nil; n++ {
		if n == max && max > 0 && s.kickWriterLocked() {
			return
		}
		s.leadLocked()
	}
}

// kickWriterLocked asks the writer goroutine for rounds up to s.owed, and
// reports whether there is one to ask (Start runs it). The caller holds
// s.mu.
func (s *Store) kickWriterLocked() bool {
	if s.kick == nil {
		return false
	}
	select {
	case s.kick <- struct{}{}:
	default: // already asked
	}
	return true
}

// writeLoop is the writer goroutine: asked by kickWriterLocked, it leads
// rounds until no record a Commit caller went on without is pending. It
// yields before each: the goroutine that asked, and others whose requests
// are ready, append their records before the round takes what is pending.
func (s *Store) writeLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case <-s.kick:
		}
		for more := true; more; {
			runtime.Gosched()
			s.mu.Lock()
			if more = s.owed > s.written && !s.writing && s.err == nil; more {
				s.leadLocked()
			}
			s.mu.Unlock()
		}
	}
}

// Durable reports whether every record up to seq is written and none of
// them was lost in a fault, without taking the lock when nothing was lost.
func (s *Store) Durable(seq uint64) bool {
	if s.writtenA.Load() < seq {
		return false
	}
	if !s.hasLost.Load() {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lostLocked(seq) == nil
}

// OnRound sets fn, which the writer calls after each round that wrote,
// outside the lock, and (failed true, on a goroutine of its own) when a
// fault starts: the owner then sends the answers that waited for the
// records written, or lets their connections learn of the fault. Set it
// before the first Commit.
func (s *Store) OnRound(fn func(failed bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onRound = fn
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

// leadLocked makes the caller the writer for one round: it takes what is
// pending for one file, writes it outside the lock, then publishes the new
// written mark. A rotation's old log is completed (written, fsynced,
// closed) in a round of its own before anything reaches the new one, so
// the logs on disk never have a gap, whatever the fsync mode. A failed
// round is cut off its file again and starts a fault. Called with s.mu held
// and s.writing false; returns with s.mu held.
func (s *Store) leadLocked() {
	s.writing = true
	f, buf, end, upto, isOld := s.file, s.pending, s.fileEnd, s.appended, false
	froms := 0 // Commit callers whose records the round carries
	if s.old != nil {
		f, buf, end, upto, isOld = s.old, s.oldPending, s.oldEnd, s.oldUpto, true
		s.old, s.oldPending = nil, nil
	} else {
		s.pending = s.spare[:0]
		s.taken, froms = upto, s.froms
		s.froms, s.lastFrom = 0, nil
	}
	s.mu.Unlock()

	var start time.Time
	if s.opts.ObserveWrite != nil {
		start = time.Now()
	}
	err := s.writeRound(f, buf, isOld)
	if s.opts.ObserveWrite != nil && len(buf) > 0 && err == nil {
		s.opts.ObserveWrite(time.Since(start))
	}
	cut := true
	if err != nil {
		cut = cutBack(f, end)
		if isOld {
			f.Close()
		}
	}

	s.mu.Lock()
	if !isOld {
		s.spare = buf[:0]
		// Rounds of more than one caller's records: other clients
		// append meanwhile, and the writer goroutine batches them
		// (Commit), until rounds of one caller's records have been the
		// rule for a while. The operations a round carries do not tell:
		// one connection carries many at once when its client pipelines
		// requests, and nobody's records would join them in the hand-off
		// (BENCHMARKS.md, "Scale (issue 18)", Session 5).
		if froms > 1 {
			s.singles = 0
		} else if s.singles < singlesToInline {
			s.singles++
		}
	}
	s.writing = false
	if err != nil {
		s.enterFaultLocked(err, !cut)
	} else {
		// A rotation during the round may have made f the old log.
		switch f {
		case s.file:
			s.fileEnd = end + int64(len(buf))
		case s.old:
			s.oldEnd = end + int64(len(buf))
		}
		if len(buf) > 0 {
			s.writes++
			s.dirty = !isOld
		}
		s.setWrittenLocked(upto)
	}
	s.cond.Broadcast()
	if err == nil && s.onRound != nil {
		s.mu.Unlock()
		s.onRound(false)
		s.mu.Lock()
	}
	if s.owed > s.written && s.err == nil {
		// Records a Commit caller went on without are still pending, and
		// this caller may not lead again (a compaction's drain, or a Wait
		// now satisfied): the writer goroutine makes sure of them.
		s.kickWriterLocked()
	}
}

// setWrittenLocked publishes a new written mark.
func (s *Store) setWrittenLocked(w uint64) {
	s.written = w
	s.taken = max(s.taken, w)
	s.writtenA.Store(w)
}

// writeRound does the I/O of one writer round on f: the bytes, then for a
// rotation's old log an fsync and close, else an fdatasync in FsyncAlways.
func (s *Store) writeRound(f *os.File, buf []byte, isOld bool) error {
	if len(buf) == 0 && !isOld {
		return nil
	}
	if f == nil {
		return errors.New("klock: store used before Recover opened its log")
	}
	if err := writeLog(f, buf); err != nil {
		return err
	}
	if isOld {
		if err := syncFile(f); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			// Written and fsynced: the records are safe; only the
			// descriptor is in doubt.
			s.log.Warn("klock: closing a completed log failed", "file", f.Name(), "err", err)
		}
		return nil
	}
	if s.opts.Fsync == FsyncAlways {
		if err := injectedFault(ioSync, f.Name()); err != nil {
			return fmt.Errorf("klock: fdatasync %s: %w", f.Name(), err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("klock: fdatasync %s: %w", f.Name(), err)
		}
	}
	return nil
}

// writeAll writes b with as few write(2) calls as the kernel allows (one,
// for a regular file, unless the disk is full).
func writeAll(f *os.File, b []byte) error {
	return writeWith(f, b, func(b []byte) error {
		_, err := f.Write(b)
		return err
	})
}

// writeLog writes a round's bytes to the log as writeAll does, but with
// raw write(2) calls: os.File.Write enters the runtime's "may block"
// system-call path, and while a write to the page cache takes a few tens of
// microseconds the runtime's monitor thread (sysmon) wakes, takes the P away
// from the writer and hands it to another thread, which the writer must win
// back when its write returns. Under many connections that was 5% of
// klockd's samples in sysmon alone, plus the thread hand-offs
// (BENCHMARKS.md, "One connection per agent"). The cost of a raw call is
// that a write the kernel does block (dirty-page throttling, a slow disk)
// holds its P meanwhile; the other Ps keep serving. fsync and the
// snapshot's large writes keep the ordinary path.
func writeLog(f *os.File, b []byte) error {
	return writeWith(f, b, func(b []byte) error { return rawWrite(f, b) })
}

// writeWith writes b to f with write, after asking the fault injector.
func writeWith(f *os.File, b []byte, write func([]byte) error) error {
	if len(b) == 0 {
		return nil
	}
	err := injectedFault(ioWrite, f.Name())
	if err != nil {
		write(b[:len(b)/2])
	} else {
		err = write(b)
	}
	if err != nil {
		return fmt.Errorf("klock: writing %s: %w", f.Name(), pathErr(err))
	}
	return nil
}

// rawWrite writes all of b to the regular file f with RawSyscall, holding
// f's descriptor against a concurrent Close meanwhile.
func rawWrite(f *os.File, b []byte) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	err = rc.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			n, _, e := syscall.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			switch {
			case e == syscall.EINTR:
				continue
			case e != 0:
				errno = e
				return true
			case n == 0:
				errno = syscall.EIO // a regular file takes nothing only with an error
				return true
			}
			b = b[n:]
		}
		return true
	})
	if err == nil && errno != 0 {
		err = errno
	}
	return err
}

// syncFile fsyncs f.
func syncFile(f *os.File) error {
	err := injectedFault(ioSync, f.Name())
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return fmt.Errorf("klock: fsync %s: %w", f.Name(), pathErr(err))
	}
	return nil
}

// pathErr drops the *os.PathError around err: messages name the file once.
func pathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// failLocked starts a fault for an error that is not the failure of a
// round (encoding a record): nothing reached the file.
func (s *Store) failLocked(err error) {
	s.enterFaultLocked(err, false)
}

// syncLog fsyncs the current log if anything was written since the last
// fsync (FsyncEverySec, once a second, from syncEverySec). A failure starts
// a fault: what was written stays acknowledged (it survives a crash of
// klockd), and healing writes it all again in a snapshot that is fsynced.
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
	// file may overlap. A rotation or a heal may close f meanwhile; the old
	// log was fsynced by the rotation itself, so ErrClosed is harmless.
	// (*os.File).Sync is used rather than fdatasync on the raw descriptor
	// because it is safe against that concurrent Close.
	if err := syncFile(f); err != nil && !errors.Is(err, os.ErrClosed) {
		s.mu.Lock()
		s.enterFaultLocked(err, false)
		s.mu.Unlock()
	}
}
