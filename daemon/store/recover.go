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

// Recover loads the newest snapshot into eng with Restore, replays the logs
// that follow with Apply, cuts a torn tail (warning with file and offset),
// opens the last log for appending and starts the background fsync and
// compaction work. eng must be new; it is the engine whose records Append
// will be given. On damage other than a torn tail it
// returns an error naming the file and offset, unless the store was opened
// with RecoverTruncate; it never returns a silently emptied state.
func (s *Store) Recover(eng *engine.Engine) (RecoveryInfo, error) {
	start := time.Now()
	var info RecoveryInfo
	files, err := listState(s.dir)
	if err != nil {
		return info, err
	}
	stamp := start.UTC().Format("20060102T150405Z")
	var snaps, logs []uint64
	for _, f := range files {
		switch f.kind {
		case kindTemp:
			os.Remove(filepath.Join(s.dir, f.name)) // an unfinished snapshot
		case kindSnapshot:
			snaps = append(snaps, f.gen)
		case kindLog:
			logs = append(logs, f.gen)
		}
	}

	// The newest snapshot that loads is the base; log.<base> follows it.
	// Without a snapshot the history starts empty at log.1.
	base := uint64(1)
	for _, g := range slices.Backward(snaps) {
		name := snapshotName(g)
		st, size, err := loadSnapshot(filepath.Join(s.dir, name), g)
		var d *DamageError
		if errors.As(err, &d) {
			if s.opts.Recover != RecoverTruncate {
				return info, fmt.Errorf("klock: snapshot %s is damaged (%s); refusing to start from a partial state. Inspect %s, or start with --recover=truncate to move it aside and use what remains", filepath.Join(s.dir, name), d.Reason, s.dir)
			}
			aside := asideName(s.dir, name, stamp)
			s.log.Warn("klock: snapshot damaged; moved aside (--recover=truncate)", "file", name, "reason", d.Reason, "moved_to", aside)
			if err := os.Rename(filepath.Join(s.dir, name), aside); err != nil {
				return info, fmt.Errorf("klock: moving damaged snapshot aside: %w", err)
			}
			info.Truncated = true
			continue
		}
		if err != nil {
			return info, err
		}
		if err := eng.Restore(st); err != nil {
			return info, fmt.Errorf("klock: snapshot %s passes its checksum but the engine rejects it: %w", filepath.Join(s.dir, name), err)
		}
		base, info.Snapshot, info.SnapshotBytes = g, name, size
		break
	}

	// Logs older than the base were replaced by it (a compaction stopped
	// before deleting them).
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
			return info, fmt.Errorf("klock: %s is missing from %s but later logs exist; refusing to start from a partial state. Start with --recover=truncate to keep what precedes the gap", want, s.dir)
		}
		s.log.Warn("klock: log missing; later logs moved aside (--recover=truncate)", "missing", want)
		s.asideLogs(chain[i:], stamp)
		chain, info.Truncated = chain[:i], true
		break
	}

	for i := 0; i < len(chain); i++ {
		g := chain[i]
		name := logName(g)
		path := filepath.Join(s.dir, name)
		n, end, err := replayLog(eng, path, g)
		info.Records += n
		info.LogBytes += end
		info.Logs++
		if err == nil {
			continue
		}
		var d *DamageError
		if !errors.As(err, &d) {
			return info, err
		}
		rest := chain[i+1:]
		if d.Torn && logsEmpty(s.dir, rest) {
			info.TornTail = true
			if d.Offset < logHeaderSize {
				// A log whose header never made it to disk has no records:
				// remove it; it is recreated below if it was the last.
				s.log.Warn("klock: removed a log with a torn header", "file", path, "reason", d.Reason)
				os.Remove(path)
				info.Logs--
				s.removeLogs(rest)
				chain = chain[:i]
				break
			}
			s.log.Warn("klock: cut torn tail of log", "file", path, "offset", d.Offset, "reason", d.Reason)
			if err := truncateFile(path, d.Offset); err != nil {
				return info, err
			}
			continue
		}
		if s.opts.Recover != RecoverTruncate {
			return info, fmt.Errorf("klock: log %s is damaged at offset %d (%s) and intact data follows; refusing to start from a partial state. Inspect it, or start with --recover=truncate to keep the records before the damage", path, d.Offset, d.Reason)
		}
		aside := asideName(s.dir, name, stamp)
		s.log.Warn("klock: log damaged; keeping the records before the damage (--recover=truncate)", "file", path, "offset", d.Offset, "reason", d.Reason, "copy", aside)
		if err := copyFile(path, aside); err != nil {
			return info, err
		}
		info.Truncated = true
		s.asideLogs(rest, stamp)
		if d.Offset < logHeaderSize {
			os.Remove(path)
			info.Logs--
			chain = chain[:i]
			break
		}
		if err := truncateFile(path, d.Offset); err != nil {
			return info, err
		}
		chain = chain[:i+1]
		break
	}
	eng.Records() // replay may journal; those records are on disk already

	// A next log created ahead of a rotation that never happened holds no
	// records: drop it rather than start every run in a new file.
	for len(chain) > 1 && logsEmpty(s.dir, chain[len(chain)-1:]) {
		os.Remove(filepath.Join(s.dir, logName(chain[len(chain)-1])))
		chain = chain[:len(chain)-1]
	}
	if err := s.openForAppend(chain, base); err != nil {
		return info, err
	}
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
	s.eng = eng
	s.snapBytes = info.SnapshotBytes
	if info.Snapshot != "" {
		s.baseGen = base
	}
	st := eng.Stats()
	info.Agents, info.Leases, info.Fence = st.Agents, st.Leases, st.Fence
	info.Duration = time.Since(start)
	s.log.Info("klock: state recovered", "dir", s.dir, "snapshot", info.Snapshot, "logs", info.Logs,
		"records", info.Records, "agents", info.Agents, "leases", info.Leases, "fence", info.Fence,
		"torn_tail", info.TornTail, "truncated", info.Truncated, "took", info.Duration.Round(time.Microsecond))
	s.wg.Add(1)
	go s.maintain()
	if s.opts.Fsync == FsyncEverySec {
		s.wg.Add(1)
		go s.syncEverySec()
	}
	return info, nil
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
