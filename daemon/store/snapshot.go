package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/daemon/engine"
)

// A snapshot is written as it is encoded, one lease at a time. Compaction
// rebuilds a large state in a private engine (compact.go); a copy of that
// state as an engine.State and then its encoding in one buffer held, at a
// million leases, three times the daemon's own heap on top of it for the
// length of a compaction (1.6 GB of RSS where the daemon held 0.5:
// BENCHMARKS.md "Scale (issue 18)"). Written as it is encoded, the body
// costs a buffer, and the state only its leases' order.

// stateSource is a state to write as a snapshot: its fields but the
// leases, their number, and each, which yields them in order (as
// engine.Engine.SnapshotStream).
type stateSource struct {
	head *engine.State
	n    int
	each func(yield func(engine.LeaseState) error) error
}

// streamedState is the state of eng, which must not change until the
// snapshot is written.
func streamedState(eng *engine.Engine) stateSource {
	head, n, each := eng.SnapshotStream()
	return stateSource{head: head, n: n, each: each}
}

// copiedState is a state copied with engine.Engine.Snapshot.
func copiedState(st *engine.State) stateSource {
	head := *st
	head.Leases = nil
	return stateSource{head: &head, n: len(st.Leases), each: st.EachLease}
}

// stateFields is the number of fields of engine.State, which encodeState
// writes by hand (TestEncodeStateIsMarshal).
const stateFields = 7

// encodeState writes src to w as the bytes msgpack.Marshal gives for the
// whole engine.State (field by field, as the library encodes a struct: a
// map of its fields in order), with the leases encoded one at a time.
func encodeState(w io.Writer, src stateSource) error {
	enc := msgpack.NewEncoder(w)
	h := src.head
	field := func(name string, v any) error {
		if err := enc.EncodeString(name); err != nil {
			return err
		}
		return enc.Encode(v)
	}
	if err := enc.EncodeMapLen(stateFields); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    any
	}{{"v", h.Version}, {"f", h.Fence}, {"la", h.LastAuto}, {"a", h.Agents}} {
		if err := field(f.name, f.v); err != nil {
			return err
		}
	}
	if err := enc.EncodeString("l"); err != nil {
		return err
	}
	if err := enc.EncodeArrayLen(src.n); err != nil {
		return err
	}
	written := 0
	err := src.each(func(ls engine.LeaseState) error {
		written++
		return enc.Encode(&ls)
	})
	if err != nil {
		return err
	}
	if written != src.n {
		return fmt.Errorf("klock: snapshot: %d leases announced, %d written", src.n, written)
	}
	if err := field("z", h.Frozen); err != nil {
		return err
	}
	return field("e", h.Ended)
}

// fileWriter writes to a file with writeAll (whose faults tests inject).
type fileWriter struct{ f *os.File }

func (w fileWriter) Write(b []byte) (int, error) {
	if err := writeAll(w.f, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n += int64(n)
	return n, err
}

// crcWriter updates a Castagnoli checksum with the bytes written to it.
type crcWriter struct{ sum uint32 }

func (w *crcWriter) Write(b []byte) (int, error) {
	w.sum = crc32.Update(w.sum, castagnoli, b)
	return len(b), nil
}

// writeSnapshot writes the snapshot of src to the new, empty file f (FORMAT.md):
// room for the header, the body as it is encoded, then the header, whose
// length and checksum are known only then (the checksum read back from the
// file, from the page cache). It returns the file's size.
func writeSnapshot(f *os.File, gen uint64, src stateSource) (int64, error) {
	if err := writeAll(f, make([]byte, snapshotHeaderSize)); err != nil {
		return 0, err
	}
	body := &countingWriter{w: fileWriter{f}}
	bw := bufio.NewWriterSize(body, snapshotBufSize(src))
	if err := encodeState(bw, src); err != nil {
		return 0, fmt.Errorf("klock: encoding snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	head, sum := snapshotHeaderStart(make([]byte, 0, snapshotHeaderSize), gen, uint64(body.n))
	r, err := os.Open(f.Name())
	if err != nil {
		return 0, fmt.Errorf("klock: reading back the snapshot: %w", err)
	}
	defer r.Close()
	crc := &crcWriter{sum: sum}
	if _, err := io.Copy(crc, io.NewSectionReader(r, snapshotHeaderSize, body.n)); err != nil {
		return 0, fmt.Errorf("klock: reading back the snapshot: %w", err)
	}
	head = binary.LittleEndian.AppendUint32(head, crc.sum)
	err = writeWith(f, head, func(b []byte) error {
		_, err := f.WriteAt(b, 0)
		return err
	})
	if err != nil {
		return 0, err
	}
	return snapshotHeaderSize + body.n, nil
}

// snapshotBufSize is the write buffer for src's snapshot: 1 MiB for a
// large state, few write(2) calls for it; for a small one (the state a busy
// daemon with few leases snapshots every CompactMinBytes of log, a second
// or less apart) a buffer of about its size. A fresh 1 MiB each time was
// zeroed, faulted in, collected and handed back to the kernel each time,
// several per cent of klockd's CPU under a durable load
// (BENCHMARKS.md, "Session 9 (dur9)").
func snapshotBufSize(src stateSource) int {
	n := 4<<10 + snapshotBytesPerEntry*(src.n+len(src.head.Agents))
	return min(n, 1<<20)
}

// snapshotBytesPerEntry is more than a lease or an agent usually takes in
// a snapshot (a lease with its ids and path: 150-250 bytes).
const snapshotBytesPerEntry = 512

// readState decodes a state written by encodeState (or msgpack.Marshal)
// from r and hands it to restore as engine.Engine.RestoreStream takes it:
// the fields before the leases, then the leases one at a time, decoded as
// restore asks for them, and the fields after them once it has read the
// leases. The fields are read in the order encodeState writes them (the
// agents before the leases); unknown fields are skipped, as
// msgpack.Unmarshal skips them.
func readState(r io.Reader, restore func(head *engine.State, each func(yield func(engine.LeaseState) error) error) error) error {
	dec := msgpack.NewDecoder(r)
	n, err := dec.DecodeMapLen()
	if err != nil {
		return err
	}
	head := new(engine.State)
	// next decodes the next field into head, and reports whether it was
	// the leases, which it leaves unread.
	i := 0
	next := func() (leases bool, err error) {
		i++
		key, err := dec.DecodeString()
		if err != nil {
			return false, err
		}
		switch key {
		case "v":
			return false, dec.Decode(&head.Version)
		case "f":
			return false, dec.Decode(&head.Fence)
		case "la":
			return false, dec.Decode(&head.LastAuto)
		case "a":
			return false, dec.Decode(&head.Agents)
		case "l":
			return true, nil
		case "z":
			return false, dec.Decode(&head.Frozen)
		case "e":
			return false, dec.Decode(&head.Ended)
		}
		return false, dec.Skip()
	}
	leases := false
	for i < n && !leases {
		if leases, err = next(); err != nil {
			return err
		}
	}
	return restore(head, func(yield func(engine.LeaseState) error) error {
		if leases {
			m, err := dec.DecodeArrayLen()
			if err != nil {
				return err
			}
			for range m {
				var ls engine.LeaseState
				if err := dec.Decode(&ls); err != nil {
					return err
				}
				if err := yield(ls); err != nil {
					return err
				}
			}
		}
		for i < n {
			again, err := next()
			if err != nil {
				return err
			}
			if again {
				return errors.New("klock: the state lists its leases twice")
			}
		}
		return nil
	})
}

// restoreSnapshot checks the snapshot file at path (FORMAT.md) and
// restores its state into eng, reading the file twice (its checksum, then
// the state) and never holding it, or its state, whole. Damage (size,
// magic, checksum, generation) is a *DamageError; an unsupported version
// wraps ErrUnsupportedVersion; a state the engine rejects is an
// *engine.Error; a body that passes its checksum but does not decode is a
// plain error. It returns the file's size.
func restoreSnapshot(eng *engine.Engine, path string, wantGen uint64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("klock: reading snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("klock: reading snapshot: %w", err)
	}
	size := fi.Size()
	head := make([]byte, snapshotHeaderSize)
	if _, err := io.ReadFull(f, head); err != nil && size >= snapshotHeaderSize {
		return 0, fmt.Errorf("klock: reading snapshot: %w", err)
	}
	gen, err := checkSnapshotHead(head, size)
	if err == nil {
		crc := &crcWriter{sum: crc32.Checksum(head[:28], castagnoli)}
		if _, err := io.Copy(crc, io.NewSectionReader(f, snapshotHeaderSize, size-snapshotHeaderSize)); err != nil {
			return 0, fmt.Errorf("klock: reading snapshot: %w", err)
		}
		err = checkSnapshotSum(head, crc.sum)
	}
	if err != nil {
		if errors.Is(err, ErrUnsupportedVersion) {
			return 0, fmt.Errorf("klock: %s: %w", path, err)
		}
		return 0, &DamageError{Reason: strings.TrimPrefix(err.Error(), "klock: ")}
	}
	if gen != wantGen {
		return 0, &DamageError{Reason: fmt.Sprintf("header says generation %d, file name says %d", gen, wantGen)}
	}
	body := bufio.NewReaderSize(io.NewSectionReader(f, snapshotHeaderSize, size-snapshotHeaderSize), 1<<16)
	err = readState(body, eng.RestoreStream)
	var ee *engine.Error
	if err != nil && !errors.As(err, &ee) {
		return 0, fmt.Errorf("klock: %s passes its checksum but does not decode (written by another version?): %w", path, err)
	}
	return size, err
}
