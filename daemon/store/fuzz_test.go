package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"testing/iotest"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/internal/msgpackwire"
)

// sampleLog returns a small valid log of varied records.
func sampleLog() []byte {
	recs := []engine.Record{
		{Kind: engine.RecRegister, Time: baseTime, AgentID: "a", Priority: 5, UID: 1000},
		{Kind: engine.RecGrant, Time: baseTime + 1, Idem: "k", Leases: []engine.Lease{{
			ID: "7f0c1b8e-0000-4000-8000-000000000001", AgentID: "a", SessionID: "s", Resource: "FILE:/x",
			Predicate: engine.Mutates, AcquiredAt: baseTime + 1, ExpiresAt: baseTime + 60_001, TTL: 60_000, Fence: 1, OwnerUID: 1000, OwnerPID: 42,
		}}},
		{Kind: engine.RecHeartbeat, Time: baseTime + 2, TTL: 60_000, LeaseIDs: []string{"7f0c1b8e-0000-4000-8000-000000000001"}},
		{Kind: engine.RecFreeze, Time: baseTime + 3, Resource: "FILE:/y"},
		{Kind: engine.RecRelease, Time: baseTime + 4, LeaseIDs: []string{"7f0c1b8e-0000-4000-8000-000000000001"}},
	}
	b := appendLogHeader(nil, 1)
	for i := range recs {
		body, err := msgpack.Marshal(&recs[i])
		if err != nil {
			panic(err)
		}
		b = appendFrame(b, body)
	}
	return b
}

// fuzzSeeds are the inputs FuzzReadLog starts from (also kept in
// testdata/fuzz/FuzzReadLog).
func fuzzSeeds() map[string][]byte {
	good := sampleLog()
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 0xff
	huge := appendLogHeader(nil, 1)
	huge = append(huge, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0)
	notMsgpack := appendFrame(appendLogHeader(nil, 1), []byte{0xc1, 0xc1})
	return map[string][]byte{
		"valid":       good,
		"torn":        good[:len(good)-5],
		"mid-damage":  flipped,
		"header-only": appendLogHeader(nil, 7),
		"short":       good[:10],
		"huge-length": huge,
		"not-msgpack": notMsgpack,
		"zeros":       append(appendLogHeader(nil, 1), make([]byte, 64)...),
	}
}

// readAll reads data through r and summarises the outcome.
func readAll(r io.Reader) (n int, end int64, err error) {
	_, end, err = ReadLog(r, func(engine.Record) error { n++; return nil })
	return n, end, err
}

func FuzzReadLog(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, end, err := readAll(bytes.NewReader(data))
		// The decoder sees the same thing however the bytes arrive.
		for name, r := range map[string]io.Reader{
			"one-byte": iotest.OneByteReader(bytes.NewReader(data)),
			"half":     iotest.HalfReader(bytes.NewReader(data)),
		} {
			n2, end2, err2 := readAll(r)
			if n2 != n || end2 != end || (err == nil) != (err2 == nil) || IsTorn(err) != IsTorn(err2) {
				t.Fatalf("%s reader: %d records, end %d, err %v; whole reader: %d, %d, %v", name, n2, end2, err2, n, end, err)
			}
		}
		if end > int64(len(data)) {
			t.Fatalf("end %d beyond input of %d bytes", end, len(data))
		}
		var d *DamageError
		if err != nil && !errors.As(err, &d) && !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("error is neither damage nor version: %v", err)
		}
		// What precedes the damage reads back cleanly, record for record.
		if end >= logHeaderSize {
			n3, end3, err3 := readAll(bytes.NewReader(data[:end]))
			if err3 != nil || n3 != n || end3 != end {
				t.Fatalf("re-reading the intact prefix: %d records, end %d, err %v; want %d, %d, nil", n3, end3, err3, n, end)
			}
		}
	})
}

func TestReadLogSeeds(t *testing.T) {
	want := map[string]struct {
		records int
		torn    bool
		ok      bool
	}{
		"valid":       {records: 5, ok: true},
		"torn":        {records: 4, torn: true},
		"header-only": {ok: true},
		"short":       {torn: true},
		"huge-length": {torn: true},
		"zeros":       {torn: true},
	}
	for name, data := range fuzzSeeds() {
		w, ok := want[name]
		if !ok {
			continue
		}
		n, _, err := readAll(bytes.NewReader(data))
		if n != w.records || (err == nil) != w.ok || IsTorn(err) != w.torn {
			t.Errorf("ReadLog(%s) = %d records, %v; want %d records, ok %v, torn %v", name, n, err, w.records, w.ok, w.torn)
		}
	}
	if _, _, err := readAll(bytes.NewReader(fuzzSeeds()["not-msgpack"])); err == nil || IsTorn(err) {
		t.Errorf("ReadLog(not-msgpack) = %v; want non-torn damage", err)
	}
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzReadLog when
// KLOCK_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("KLOCK_WRITE_CORPUS") != "1" {
		t.Skip("set KLOCK_WRITE_CORPUS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzReadLog")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range fuzzSeeds() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckMsgpack(t *testing.T) {
	// Every real record passes.
	lr, err := NewLogReader(bytes.NewReader(sampleLog()))
	if err != nil {
		t.Fatal(err)
	}
	for {
		body, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := msgpackwire.Check(body, maxMsgpackContainer); err != nil {
			t.Fatalf("msgpackwire.Check(valid record) = %v", err)
		}
	}
	bad := map[string][]byte{
		"array32 of 2^32-1":   {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01},
		"map16 beyond input":  {0xde, 0x00, 0x10, 0x01, 0x01},
		"str32 beyond input":  {0xdb, 0x00, 0x00, 0x10, 0x00, 'a'},
		"never-used byte":     {0xc1},
		"trailing":            {0x01, 0x02},
		"empty":               {},
		"deep":                bytes.Repeat([]byte{0x91}, 100),
		"ext8 cut":            {0xc7, 0x05, 0x01},
		"leases of 2^31 maps": append([]byte{0x81, 0xa1, 'g', 0xdd, 0x7f, 0xff, 0xff, 0xff}, 0x80),
	}
	for name, b := range bad {
		if err := msgpackwire.Check(b, maxMsgpackContainer); err == nil {
			t.Errorf("msgpackwire.Check(%s) = nil; want an error", name)
		}
		if _, err := DecodeRecord(b); err == nil {
			t.Errorf("DecodeRecord(%s) = nil error", name)
		}
	}
}

// sampleSnapshot returns a small valid snapshot file.
func sampleSnapshot() []byte {
	st := &engine.State{Version: engine.StateVersion, Fence: 3, LastAuto: 7,
		Agents: []engine.AgentState{{ID: "a", Priority: 5, RegisteredAt: baseTime, UID: 1000}},
		Leases: []engine.LeaseState{{Idem: "k", Lease: engine.Lease{
			ID: "7f0c1b8e-0000-4000-8000-000000000001", AgentID: "a", SessionID: "s", Resource: "FILE:/x",
			Predicate: engine.Mutates, AcquiredAt: baseTime, ExpiresAt: baseTime + 60_000, TTL: 60_000, Fence: 3}}},
		Frozen: []string{"FILE:/y"},
		Ended:  []engine.SessionRef{{AgentID: "a", SessionID: "old"}},
	}
	body, err := msgpack.Marshal(st)
	if err != nil {
		panic(err)
	}
	return append(appendSnapshotHeader(nil, 2, body), body...)
}

func FuzzDecodeSnapshot(f *testing.F) {
	good := sampleSnapshot()
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(good[:snapshotHeaderSize])
	f.Add([]byte(snapshotMagic))
	f.Add(good[snapshotHeaderSize:]) // a body alone: framed below with a valid checksum
	f.Fuzz(func(t *testing.T, data []byte) {
		DecodeSnapshot(data)
		// Frame the input as a body with a valid header and checksum, so the
		// fuzzer reaches the msgpack checks and the decoder.
		gen, st, err := DecodeSnapshot(append(appendSnapshotHeader(nil, 9, data), data...))
		if err != nil {
			return
		}
		// What decodes re-encodes to a snapshot that decodes the same.
		body, merr := msgpack.Marshal(st)
		if merr != nil {
			t.Fatalf("re-encoding a decoded state: %v", merr)
		}
		gen2, st2, err := DecodeSnapshot(append(appendSnapshotHeader(nil, gen, body), body...))
		if err != nil || gen2 != gen || !reflect.DeepEqual(st, st2) {
			t.Fatalf("round trip: gen %d→%d, err %v", gen, gen2, err)
		}
	})
}
