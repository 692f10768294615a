package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/internal/msgpackwire"
)

// maxMsgpackContainer bounds the elements of one array or map in a record
// body, checked (msgpackwire.Check) before the body is decoded; snapshots
// are checked with no element cap, since one holds every lease in an
// array. Real records nest four levels deep and hold at most
// maxIDsPerRecord ids (Append splits larger ones) or engine.MaxIntents
// leases.
const maxMsgpackContainer = 1 << 16

// RecordDecoder decodes log record bodies into engine records, reusing its
// buffers between calls.
type RecordDecoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

// NewRecordDecoder returns a RecordDecoder.
func NewRecordDecoder() *RecordDecoder {
	d := &RecordDecoder{}
	d.dec = msgpack.NewDecoder(&d.r)
	return d
}

// Decode decodes one record body. It fails on anything but exactly one
// msgpack value that decodes as an engine.Record.
func (d *RecordDecoder) Decode(body []byte) (engine.Record, error) {
	if rec, ok := decodeRecordFast(body); ok && fastEncode {
		return rec, nil
	}
	var rec engine.Record
	if err := msgpackwire.Check(body, maxMsgpackContainer); err != nil {
		return engine.Record{}, fmt.Errorf("klock: malformed record: %w", err)
	}
	d.r.Reset(body)
	d.dec.Reset(&d.r)
	if err := d.dec.Decode(&rec); err != nil {
		return engine.Record{}, fmt.Errorf("klock: undecodable record: %w", err)
	}
	if d.r.Len() != 0 {
		return engine.Record{}, fmt.Errorf("klock: record has %d trailing bytes", d.r.Len())
	}
	return rec, nil
}

// DecodeRecord decodes one record body (see RecordDecoder).
func DecodeRecord(body []byte) (engine.Record, error) {
	return NewRecordDecoder().Decode(body)
}

// ReadLog reads a whole log from r, calling fn with each record in order. It
// returns the log's generation and the offset just past the last intact
// record. The error is nil at a clean end, a *DamageError for a bad record
// (torn or not; a record that passes its checksum but does not decode is
// damage too), fn's error, or r's.
func ReadLog(r io.Reader, fn func(engine.Record) error) (gen uint64, end int64, err error) {
	lr, err := NewLogReader(r)
	if err != nil {
		return 0, 0, err
	}
	dec := NewRecordDecoder()
	for {
		off := lr.Offset()
		body, err := lr.Next()
		if err == io.EOF {
			return lr.Generation(), lr.Offset(), nil
		}
		if err != nil {
			return lr.Generation(), off, err
		}
		rec, err := dec.Decode(body)
		if err != nil {
			return lr.Generation(), off, &DamageError{Offset: off, Reason: err.Error()}
		}
		if err := fn(rec); err != nil {
			return lr.Generation(), off, err
		}
	}
}

// fileKind classifies a file in the state directory.
type fileKind uint8

const (
	kindOther fileKind = iota
	kindLog
	kindSnapshot
	kindTemp
)

// stateFile is one file of the state directory.
type stateFile struct {
	name string
	kind fileKind
	gen  uint64
}

// listState lists the state directory's logs, snapshots and leftover
// temporary files, sorted by generation.
func listState(dir string) ([]stateFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("klock: reading state directory: %w", err)
	}
	var out []stateFile
	for _, e := range ents {
		name := e.Name()
		f := stateFile{name: name}
		switch {
		case strings.HasSuffix(name, ".tmp"):
			f.kind = kindTemp
		case strings.HasPrefix(name, "log."):
			f.kind = kindLog
		case strings.HasPrefix(name, "snapshot."):
			f.kind = kindSnapshot
		default:
			continue
		}
		if f.kind != kindTemp {
			hex := name[strings.IndexByte(name, '.')+1:]
			g, err := strconv.ParseUint(hex, 16, 64)
			if err != nil || len(hex) != 16 {
				continue // *.damaged-* and other names are not ours to read
			}
			f.gen = g
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b stateFile) int {
		if a.gen != b.gen {
			if a.gen < b.gen {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	return out, nil
}

// DecodeSnapshot checks a whole snapshot file's bytes (FORMAT.md) and
// decodes its state. Damage (size, magic, checksum) is a *DamageError; an
// unsupported version wraps ErrUnsupportedVersion; a body that passes its
// checksum but does not decode is a plain error. The daemon itself reads
// a snapshot without holding it whole (restoreSnapshot), with the same
// decoder.
func DecodeSnapshot(b []byte) (gen uint64, st *engine.State, err error) {
	gen, body, err := parseSnapshot(b)
	if err != nil {
		if errors.Is(err, ErrUnsupportedVersion) {
			return 0, nil, err
		}
		return 0, nil, &DamageError{Reason: strings.TrimPrefix(err.Error(), "klock: ")}
	}
	if err := msgpackwire.Check(body, uint64(len(body))); err != nil {
		return 0, nil, fmt.Errorf("klock: snapshot passes its checksum but is not well-formed msgpack: %w", err)
	}
	err = readState(bytes.NewReader(body), func(head *engine.State, each func(func(engine.LeaseState) error) error) error {
		st = head
		return each(func(ls engine.LeaseState) error {
			st.Leases = append(st.Leases, ls)
			return nil
		})
	})
	if err != nil {
		return 0, nil, fmt.Errorf("klock: snapshot passes its checksum but does not decode (written by another version?): %w", err)
	}
	return gen, st, nil
}

// asideName is where damaged files are moved under --recover=truncate.
func asideName(dir, name, stamp string) string {
	return filepath.Join(dir, name+".damaged-"+stamp)
}
