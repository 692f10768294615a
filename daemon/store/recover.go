package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/klockd/klock/daemon/engine"
)

// RecoveryInfo says what Recover loaded.
type RecoveryInfo struct {
	Snapshot      string // snapshot file loaded; "" when starting from empty
	SnapshotBytes int64
	Logs          int   // log files replayed
	Records       int   // records replayed
	LogBytes      int64 // bytes of intact records replayed, headers included
	TornTail      bool  // a torn tail was cut
	Truncated     bool  // damage was cut away because of RecoverTruncate
	Agents        int
	Leases        int // leases in the state, expired ones not yet removed included
	Fence         uint64
	Duration      time.Duration
}

// Recover loads the state directory into eng, in four steps: pickBase
// loads the newest snapshot that loads (Restore), checkChain finds the logs
// that follow it without a gap, replay applies them (Apply), cutting a torn
// tail with a warning, and openForAppend opens the last log for appending.
// eng must be new; it is the engine whose records Append will be given.
// On damage other than a torn tail it returns an error naming the file and
// offset, unless the store was opened with RecoverTruncate; it never
// returns a silently emptied state. Recover starts nothing in the
// background: call Start once it has succeeded.
func (s *Store) Recover(eng *engine.Engine) (RecoveryInfo, error) {
	r := &recovery{s: s, eng: eng, start: time.Now()}
	r.stamp = r.start.UTC().Format("20060102T150405Z")
	snaps, logs, err := s.scan()
	if err != nil {
		return r.info, err
	}
	base, err := r.pickBase(snaps)
	if err != nil {
		return r.info, err
	}
	chain, err := r.checkChain(base, logs)
	if err != nil {
		return r.info, err
	}
	if chain, err = r.replay(chain); err != nil {
		return r.info, err
	}
	if err := s.openForAppend(chain, base); err != nil {
		return r.info, err
	}
	r.finish(chain, base)
	return r.info, nil
}

// Start starts the store's background work: the maintenance goroutine
// (pre-creating the next log, compaction), the writer goroutine (Commit)
// and, with FsyncEverySec, the once-a-second fsync. Call it once, after
// Recover succeeded; Close stops them.
func (s *Store) Start() {
	s.mu.Lock()
	s.kick = make(chan struct{}, 1)
	s.mu.Unlock()
	s.wg.Add(2)
	go s.maintain()
	go s.writeLoop()
	if s.opts.Fsync == FsyncEverySec {
		s.wg.Add(1)
		go s.syncEverySec()
	}
}

// recovery is one Recover in progress.
type recovery struct {
	s     *Store
	eng   *engine.Engine
	info  RecoveryInfo
	start time.Time
	stamp string // names files moved aside
}

// scan lists the state directory: snapshot and log generations, in order.
// An unfinished snapshot (*.tmp) is removed.
func (s *Store) scan() (snaps, logs []uint64, err error) {
	files, err := listState(s.dir)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range files {
		switch f.kind {
		case kindTemp:
			os.Remove(filepath.Join(s.dir, f.name))
		case kindSnapshot:
			snaps = append(snaps, f.gen)
		case kindLog:
			logs = append(logs, f.gen)
		}
	}
	return snaps, logs, nil
}

// pickBase restores the newest snapshot that loads into the engine and
// returns its generation, the first log that follows it; without one the
// history starts empty at log.1. A damaged snapshot stops recovery, or is
// moved aside under RecoverTruncate.
func (r *recovery) pickBase(snaps []uint64) (uint64, error) {
	s := r.s
	for _, g := range slices.Backward(snaps) {
		name := snapshotName(g)
		size, err := restoreSnapshot(r.eng, filepath.Join(s.dir, name), g)
		var d *DamageError
		if errors.As(err, &d) {
			if s.opts.Recover != RecoverTruncate {
				return 0, fmt.Errorf("klock: snapshot %s is damaged (%s); refusing to start from a partial state. Inspect %s, or start with --recover=truncate to move it aside and use what remains", filepath.Join(s.dir, name), d.Reason, s.dir)
			}
			aside := asideName(s.dir, name, r.stamp)
			s.log.Warn("klock: snapshot damaged; moved aside (--recover=truncate)", "file", name, "reason", d.Reason, "moved_to", aside)
			if err := os.Rename(filepath.Join(s.dir, name), aside); err != nil {
				return 0, fmt.Errorf("klock: moving damaged snapshot aside: %w", err)
			}
			r.info.Truncated = true
			continue
		}
		var rejected *engine.Error
		if errors.As(err, &rejected) {
			return 0, fmt.Errorf("klock: snapshot %s passes its checksum but the engine rejects it: %w", filepath.Join(s.dir, name), err)
		}
		if err != nil {
			return 0, err
		}
		r.info.Snapshot, r.info.SnapshotBytes = name, size
		return g, nil
	}
	return 1, nil
}

// checkChain returns the logs from base on, which must follow each other
// without a gap. Logs older than base were replaced by it (a compaction
// stopped before deleting them) and are removed. A gap stops recovery, or
// moves the logs after it aside under RecoverTruncate.
func (r *recovery) checkChain(base uint64, logs []uint64) ([]uint64, error) {
	s := r.s
	var chain []uint64
	for _, g := range logs {
		if g < base {
			os.Remove(filepath.Join(s.dir, logName(g)))
			continue
		}
		chain = append(chain, g)
	}
	for i, g := range chain {
		if g == base+uint64(i) {
			continue
		}
		want := logName(base + uint64(i))
		if s.opts.Recover != RecoverTruncate {
			return nil, fmt.Errorf("klock: %s is missing from %s but later logs exist; refusing to start from a partial state. Start with --recover=truncate to keep what precedes the gap", want, s.dir)
		}
		s.log.Warn("klock: log missing; later logs moved aside (--recover=truncate)", "missing", want)
		s.asideLogs(chain[i:], r.stamp)
		r.info.Truncated = true
		return chain[:i], nil
	}
	return chain, nil
}

// replay applies the chain's logs to the engine in order and returns the
// chain as it stands after: a torn tail is cut (a log with a torn header is
// removed), damage with intact records after it stops recovery, or is cut
// away under RecoverTruncate (a copy kept, later logs moved aside). A next
// log created ahead of a rotation that never happened is dropped.
func (r *recovery) replay(chain []uint64) ([]uint64, error) {
	s := r.s
	for i := 0; i < len(chain); i++ {
		g := chain[i]
		path := filepath.Join(s.dir, logName(g))
		n, end, err := replayLog(r.eng, path, g)
		r.info.Records += n
		r.info.LogBytes += end
		r.info.Logs++
		if err == nil {
			continue
		}
		var d *DamageError
		if !errors.As(err, &d) {
			return nil, err
		}
		rest := chain[i+1:]
		if d.Torn && logsEmpty(s.dir, rest) {
			r.info.TornTail = true
			if d.Offset < logHeaderSize {
				// A log whose header never made it to disk has no records:
				// remove it; it is recreated if it was the last.
				s.log.Warn("klock: removed a log with a torn header", "file", path, "reason", d.Reason)
				os.Remove(path)
				r.info.Logs--
				s.removeLogs(rest)
				chain = chain[:i]
				break
			}
			s.log.Warn("klock: cut torn tail of log", "file", path, "offset", d.Offset, "reason", d.Reason)
			if err := truncateFile(path, d.Offset); err != nil {
				return nil, err
			}
			continue
		}
		if chain, err = r.cutDamage(chain, i, d); err != nil {
			return nil, err
		}
		break
	}
	r.eng.Records() // replay may journal; those records are on disk already

	// A next log created ahead of a rotation that never happened holds no
	// records: drop it rather than start every run in a new file.
	for len(chain) > 1 && logsEmpty(s.dir, chain[len(chain)-1:]) {
		os.Remove(filepath.Join(s.dir, logName(chain[len(chain)-1])))
		chain = chain[:len(chain)-1]
	}
	return chain, nil
}

// cutDamage handles damage d in chain[i] that is not a torn tail: an error,
// unless RecoverTruncate, which keeps a copy of the log, cuts it at the
// damage and moves the later logs aside. It returns the chain that remains.
func (r *recovery) cutDamage(chain []uint64, i int, d *DamageError) ([]uint64, error) {
	s := r.s
	name := logName(chain[i])
	path := filepath.Join(s.dir, name)
	if s.opts.Recover != RecoverTruncate {
		return nil, fmt.Errorf("klock: log %s is damaged at offset %d (%s) and intact data follows; refusing to start from a partial state. Inspect it, or start with --recover=truncate to keep the records before the damage", path, d.Offset, d.Reason)
	}
	aside := asideName(s.dir, name, r.stamp)
	s.log.Warn("klock: log damaged; keeping the records before the damage (--recover=truncate)", "file", path, "offset", d.Offset, "reason", d.Reason, "copy", aside)
	if err := copyFile(path, aside); err != nil {
		return nil, err
	}
	r.info.Truncated = true
	s.asideLogs(chain[i+1:], r.stamp)
	if d.Offset < logHeaderSize {
		os.Remove(path)
		r.info.Logs--
		return chain[:i], nil
	}
	if err := truncateFile(path, d.Offset); err != nil {
		return nil, err
	}
	return chain[:i+1], nil
}

// finish records what was recovered in the store (the engine, the base,
// the log bytes compaction weighs) and in the info, and logs one line.
func (r *recovery) finish(chain []uint64, base uint64) {
	s := r.s
	// Compaction weighs everything replayed since the snapshot, however
	// many files it spans.
	if len(chain) > 1 {
		s.logBytes = 0
		for _, g := range chain {
			if fi, err := os.Stat(filepath.Join(s.dir, logName(g))); err == nil {
				s.logBytes += fi.Size()
			}
		}
	}
	s.eng = r.eng
	s.snapBytes = r.info.SnapshotBytes
	if r.info.Snapshot != "" {
		s.baseGen = base
	}
	st := r.eng.Stats()
	info := &r.info
	info.Agents, info.Leases, info.Fence = st.Agents, st.Leases, st.Fence
	info.Duration = time.Since(r.start)
	s.log.Info("klock: state recovered", "dir", s.dir, "snapshot", info.Snapshot, "logs", info.Logs,
		"records", info.Records, "agents", info.Agents, "leases", info.Leases, "fence", info.Fence,
		"torn_tail", info.TornTail, "truncated", info.Truncated, "took", info.Duration.Round(time.Microsecond))
}

// replayLog applies every record of one log to eng. It returns the number
// of records applied and the offset after the last one. A record that
// decodes but that Apply rejects is damage (the log does not match the
// state it follows).
func replayLog(eng *engine.Engine, path string, gen uint64) (int, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("klock: opening log: %w", err)
	}
	defer f.Close()
	n := 0
	var applyErr error
	var applyKind engine.RecordKind
	hgen, end, err := ReadLog(f, func(r engine.Record) error {
		if err := eng.Apply(r); err != nil {
			applyErr, applyKind = err, r.Kind
			return err
		}
		n++
		return nil
	})
	if applyErr != nil {
		return n, end, &DamageError{Offset: end, Reason: fmt.Sprintf("the engine rejects a kind %d record: %v", applyKind, applyErr)}
	}
	if err == nil && hgen != gen {
		return n, 0, &DamageError{Offset: 0, Reason: fmt.Sprintf("header says generation %d, file name says %d", hgen, gen)}
	}
	if errors.Is(err, ErrUnsupportedVersion) {
		return n, end, fmt.Errorf("klock: %s: %w", path, err)
	}
	return n, end, err
}

// logsEmpty reports whether the logs hold no records (header at most).
func logsEmpty(dir string, gens []uint64) bool {
	for _, g := range gens {
		fi, err := os.Stat(filepath.Join(dir, logName(g)))
		if err != nil || fi.Size() > logHeaderSize {
			return false
		}
	}
	return true
}

// asideLogs moves logs out of the chain under --recover=truncate.
func (s *Store) asideLogs(gens []uint64, stamp string) {
	for _, g := range gens {
		name := logName(g)
		if err := os.Rename(filepath.Join(s.dir, name), asideName(s.dir, name, stamp)); err != nil {
			s.log.Warn("klock: cannot move log aside", "file", name, "err", err)
		}
	}
}

// removeLogs deletes logs known to hold no records.
func (s *Store) removeLogs(gens []uint64) {
	for _, g := range gens {
		os.Remove(filepath.Join(s.dir, logName(g)))
	}
}

// openForAppend opens the last log of the chain for appending, or creates
// log.<base> when there is none.
func (s *Store) openForAppend(chain []uint64, base uint64) error {
	if len(chain) == 0 {
		f, err := createLog(s.dir, base)
		if err != nil {
			return err
		}
		s.file, s.gen, s.fileEnd, s.logBytes = f, base, logHeaderSize, logHeaderSize
		return nil
	}
	g := chain[len(chain)-1]
	path := filepath.Join(s.dir, logName(g))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("klock: opening log for appending: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("klock: opening log for appending: %w", err)
	}
	s.file, s.gen, s.fileEnd, s.logBytes = f, g, fi.Size(), fi.Size()
	return nil
}

// truncateFile cuts path at off and fsyncs it.
func truncateFile(path string, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("klock: opening log to cut it: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(off); err != nil {
		return fmt.Errorf("klock: cutting %s at offset %d: %w", path, off, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("klock: fsync %s: %w", path, err)
	}
	return nil
}

// copyFile copies src to a new file dst (kept for the operator to inspect).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("klock: copying damaged log: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("klock: copying damaged log: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("klock: copying damaged log: %w", err)
	}
	return out.Close()
}
