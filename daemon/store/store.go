package store

// How the daemon wires a Store (package daemon):
//
//	st, err := store.Open(dir, store.Options{Fsync: mode, Recover: rmode, Logger: log})
//	eng := engine.New(engine.Config{..., Journal: true})
//	info, err := st.Recover(eng)          // before serving; logs one line
//	st.Start()                            // fsync and compaction in the background
//	srv := server.New(server.Config{Engine: eng, Journal: st, ...})
//	... serve ...
//	srv.Shutdown(ctx); st.Close()         // Close after the last Append
//
// The server then, under its engine mutex after every engine call:
//
//	seq := st.Append(eng.Records())       // encode into the pending buffer
//
// and before sending the replies of that batch, outside the mutex:
//
//	err := st.Wait(seq)                   // group commit
//
// or, to go on without waiting and have the round that writes seq send the
// replies (the server's connections do; daemon/server/answer.go):
//
//	st.OnRound(sendDurableReplies)        // once, before serving
//	written, err := st.Commit(seq, conn)  // false: OnRound follows that round
//
// Compaction needs no other hook: when the log has outgrown the last
// snapshot, Append (under the engine mutex) switches to a pre-created next
// log, copying the state if it is small; a background goroutine otherwise
// rebuilds the state at the switch from the files (last snapshot + logs) in
// a private engine, then writes it to a temporary file, fsyncs it, renames
// it, fsyncs the directory and deletes the files it replaces (compact.go).

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/daemon/engine"
)

// FsyncMode says when the log is fsynced, as Redis' appendfsync.
type FsyncMode uint8

// The fsync modes. A write(2) alone already survives a crash of the daemon
// (kill -9); fsync adds survival of a power loss or kernel crash.
const (
	// FsyncEverySec fsyncs once a second when something was written: a
	// power loss may lose the last second. The default.
	FsyncEverySec FsyncMode = iota
	// FsyncAlways fsyncs every group commit before its replies are sent.
	FsyncAlways
	// FsyncNever leaves flushing to the kernel.
	FsyncNever
)

// ParseFsyncMode parses "always", "everysec" or "never".
func ParseFsyncMode(s string) (FsyncMode, error) {
	switch strings.ToLower(s) {
	case "always":
		return FsyncAlways, nil
	case "everysec", "":
		return FsyncEverySec, nil
	case "never":
		return FsyncNever, nil
	}
	return 0, fmt.Errorf("klock: unknown fsync mode %q (want always, everysec or never)", s)
}

// String returns the mode as the --fsync flag spells it.
func (m FsyncMode) String() string {
	switch m {
	case FsyncAlways:
		return "always"
	case FsyncNever:
		return "never"
	}
	return "everysec"
}

// RecoverMode says what recovery does with damage that is not a torn tail.
type RecoverMode uint8

// The recovery modes.
const (
	// RecoverFail refuses to start on damage in the middle of a log or in a
	// snapshot: an operator must look. A torn tail is always cut.
	RecoverFail RecoverMode = iota
	// RecoverTruncate keeps what precedes the damage, moves the damaged
	// files aside (*.damaged-<time>) and starts.
	RecoverTruncate
)

// ParseRecoverMode parses "fail" or "truncate".
func ParseRecoverMode(s string) (RecoverMode, error) {
	switch strings.ToLower(s) {
	case "fail", "":
		return RecoverFail, nil
	case "truncate":
		return RecoverTruncate, nil
	}
	return 0, fmt.Errorf("klock: unknown recover mode %q (want fail or truncate)", s)
}

// String returns the mode as the --recover flag spells it.
func (m RecoverMode) String() string {
	if m == RecoverTruncate {
		return "truncate"
	}
	return "fail"
}

// DefaultCompactMinBytes is the log size below which no compaction happens.
const DefaultCompactMinBytes = 4 << 20

// Options configures a Store.
type Options struct {
	Fsync   FsyncMode
	Recover RecoverMode
	Logger  *slog.Logger // nil = slog.Default()
	// CompactMinBytes: the log is compacted once it is larger than both this
	// and the last snapshot. 0 = DefaultCompactMinBytes; negative = never.
	CompactMinBytes int64
	// OnFault, when set, is called on a goroutine of its own each time the
	// store enters a fault (see fault.go), so that the engine's owner acts
	// on it without waiting for its next request.
	OnFault func()
	// ObserveWrite, when set, is told how long each write round took (the
	// write of a batch of records, and its fdatasync with FsyncAlways), for
	// klock_journal_write_seconds. It runs on the writer, outside the lock.
	ObserveWrite func(time.Duration)
}

// Store is an open state directory. Append and Wait may be called from any
// goroutine (Append under the engine mutex); Recover must come first, and
// Start after it.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger
	lock *os.File

	prepMu sync.Mutex // serialises pre-creating the next log

	// eng is the engine Recover loaded. Append, which runs under the engine
	// mutex, may copy a small state from it for compaction.
	eng *engine.Engine

	// mu guards the fields that follow. Lock order: engine mutex, then mu.
	mu       sync.Mutex
	cond     *sync.Cond // signalled when a writer round ends
	enc      *msgpack.Encoder
	encBuf   bytes.Buffer
	pending  []byte // frames appended, not yet taken by a writer
	spare    []byte // the previous round's buffer, reused
	appended uint64 // sequence of the last Append with records
	written  uint64 // every sequence <= written is written (and synced for always)
	writing  bool   // a writer round is in progress
	owed     uint64 // the highest sequence a Commit caller went on without waiting for
	singles  int    // rounds in a row, up to singlesToInline, that carried one caller's records (Commit)
	taken    uint64 // sequence of the last Append a round took (written once it ends)
	froms    int    // Commit callers whose records wait for the next round, counted by changes of lastFrom
	lastFrom any    // the last of them
	writes   uint64 // writer rounds that wrote something (group commits)
	dirty    bool   // written since the last fsync (everysec)
	err      error  // why Wait fails past written: an *UnavailableError during a fault, or ErrClosed
	closed   bool
	file     *os.File // current log, opened for append
	fileEnd  int64    // bytes of file written by rounds that succeeded
	gen      uint64   // current log's generation
	logBytes int64    // bytes of log since the last snapshot (all files), pending frames included

	// writtenA mirrors written, and hasLost says lost is not empty, for
	// Durable without the lock. onRound is told of each round (Commit).
	writtenA atomic.Uint64
	hasLost  atomic.Bool
	onRound  func(failed bool)

	// Rotation and compaction (compact.go).
	old            *os.File      // previous log, until its pending frames are written
	oldPending     []byte        // frames for old
	oldEnd         int64         // bytes of old written by rounds that succeeded
	oldUpto        uint64        // sequence of the last Append whose frames went to old
	next           *os.File      // pre-created log gen+1, ready for rotation
	snapBytes      int64         // size of the last snapshot
	baseGen        uint64        // generation of the last snapshot; 0 = none
	compactThrough uint64        // last log the pending compaction covers; 0 = none
	compactState   *engine.State // the state at the rotation, when small enough to copy
	compacting     bool          // a rotation happened and its snapshot is not written yet
	compactErr     error         // the last compaction's error
	nextFailed     time.Time     // last failure to pre-create the next log

	// Faults (fault.go). fault is also read without mu, by Fault.
	fault atomic.Pointer[Fault] // the current fault; nil when healthy
	epoch uint64                // faults so far
	lost  []lostRange           // sequences healed faults never wrote

	wake chan struct{} // wakes the maintenance goroutine
	done chan struct{} // closed by Close
	kick chan struct{} // asks the writer goroutine for a round (Commit); nil before Start
	wg   sync.WaitGroup
}

// Open locks the state directory dir (creating it, mode 0700) for this
// process. It returns an error naming the directory, and the pid holding it
// when known, if another klockd has it. Call Recover next.
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("klock: no state directory given (run in memory without a store instead)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.CompactMinBytes == 0 {
		opts.CompactMinBytes = DefaultCompactMinBytes
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("klock: state directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("klock: creating state directory: %w", err)
	}
	lock, err := lockDir(abs)
	if err != nil {
		return nil, err
	}
	s := &Store{
		dir:  abs,
		opts: opts,
		log:  opts.Logger,
		lock: lock,
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	s.cond = sync.NewCond(&s.mu)
	s.enc = msgpack.NewEncoder(&s.encBuf)
	s.enc.UseCompactInts(true)
	return s, nil
}

// Dir returns the state directory's absolute path.
func (s *Store) Dir() string { return s.dir }

// Close writes and fsyncs everything appended, closes the log and releases
// the directory lock. Call it after the last Append; later Waits return
// ErrClosed. Close returns the store's write error, if any.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.done)
	s.wg.Wait() // the maintenance goroutine finishes a snapshot in progress

	s.mu.Lock()
	for (s.written < s.appended || s.old != nil || s.writing) && s.err == nil {
		if s.writing {
			s.cond.Wait()
			continue
		}
		s.leadLocked()
	}
	err := s.err
	if s.file != nil {
		if serr := s.file.Sync(); serr != nil && err == nil {
			err = fmt.Errorf("klock: fsync %s: %w", s.file.Name(), serr)
		}
		if cerr := s.file.Close(); cerr != nil && err == nil {
			err = cerr
		}
		s.file = nil
	}
	if s.next != nil {
		s.next.Close()
		s.next = nil
	}
	if s.err == nil {
		s.err = ErrClosed
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	if uerr := unlockDir(s.lock); uerr != nil && err == nil {
		err = uerr
	}
	return err
}

// maintain is the background compaction goroutine: it pre-creates the
// next log and writes snapshots. The once-a-second fsync has its own
// goroutine (syncEverySec) so that a long compaction never delays it.
func (s *Store) maintain() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			s.compact()
			return
		case <-s.wake:
			s.compact()
			s.prepareNext()
		}
	}
}

// syncEverySec fsyncs the log once a second when something was written
// (FsyncEverySec).
func (s *Store) syncEverySec() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.syncLog()
		}
	}
}

// signalLocked wakes the maintenance goroutine without blocking.
func (s *Store) signalLocked() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// File names: generations are 16 hex digits so names sort in order.
func logName(gen uint64) string      { return fmt.Sprintf("log.%016x", gen) }
func snapshotName(gen uint64) string { return fmt.Sprintf("snapshot.%016x", gen) }

// syncDir fsyncs a directory so that creates, renames and removes in it
// survive a power loss.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	err = injectedFault(ioSync, dir)
	if err == nil {
		err = d.Sync()
	}
	if err != nil {
		return fmt.Errorf("klock: fsync directory %s: %w", dir, err)
	}
	return nil
}
