package store

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/internal/msgpackwire"
)

func TestRecordLayout(t *testing.T) {
	if !fastEncode {
		t.Fatalf("engine.Record or engine.Lease changed; update encode.go (records are encoded by reflection meanwhile):\n record: %s\n lease:  %s",
			layoutOf(reflect.TypeFor[engine.Record]()), layoutOf(reflect.TypeFor[engine.Lease]()))
	}
}

// randomRecord fills every field of a record (or leaves it empty) with
// values at msgpack's encoding boundaries.
func randomRecord(rng *rand.Rand) engine.Record {
	ints := []int64{0, 1, 31, 127, 128, 255, 256, 65535, 65536, math.MaxInt32, math.MaxInt32 + 1, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64, baseTime}
	i64 := func() int64 { return ints[rng.IntN(len(ints))] }
	str := func() string {
		switch rng.IntN(40) {
		case 0:
			return ""
		case 1:
			return strings.Repeat("x", 31+rng.IntN(3))
		case 2:
			return strings.Repeat("y", 255+rng.IntN(3))
		case 3:
			return strings.Repeat("z", 65535+rng.IntN(3))
		case 4, 5, 6, 7, 8, 9:
			return ""
		}
		return "FILE:/src/é"
	}
	r := engine.Record{Kind: engine.RecordKind(rng.IntN(256)), Time: i64(), AgentID: str(), SessionID: str(),
		Priority: i64(), UID: uint32(rng.Uint64()), Auto: rng.IntN(2) == 0, TTL: i64(), Resource: str(), Idem: str()}
	if rng.IntN(3) == 0 {
		r.UID = 0
	}
	for range []int{0, 1, 15, 16, 17}[rng.IntN(5)] {
		r.LeaseIDs = append(r.LeaseIDs, str())
	}
	proc := func() *engine.Process {
		if rng.IntN(2) == 0 {
			return nil
		}
		return &engine.Process{PID: int32(i64()), Boot: uint32(rng.Uint64() >> uint(rng.IntN(64))),
			Start: rng.Uint64() >> uint(rng.IntN(64))}
	}
	for range []int{0, 1, 15, 16, 20}[rng.IntN(5)] {
		r.Leases = append(r.Leases, engine.Lease{ID: str(), AgentID: str(), SessionID: str(), Resource: str(),
			Predicate: engine.Predicate(rng.IntN(256)), AcquiredAt: i64(), ExpiresAt: i64(), TTL: i64(),
			Fence: rng.Uint64() >> uint(rng.IntN(64)), OwnerUID: uint32(rng.Uint64()), OwnerPID: int32(i64()),
			Bound: proc(), ClientPath: str()})
	}
	r.Bound = proc()
	return r
}

func TestAppendRecordMatchesLibrary(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var lib bytes.Buffer
	enc := msgpack.NewEncoder(&lib)
	enc.UseCompactInts(true)
	for i := range 400 {
		r := randomRecord(rng)
		fast := appendRecord(nil, &r)
		got, err := DecodeRecord(fast)
		if err != nil {
			t.Fatalf("record %d: decoding the fast encoding: %v", i, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("record %d: fast encoding decodes to\n%+v\nwant\n%+v", i, got, r)
		}
		lib.Reset()
		if err := enc.Encode(&r); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fast, lib.Bytes()) {
			t.Fatalf("record %d: fast encoding differs from the library's:\n%x\n%x", i, fast, lib.Bytes())
		}
	}
}

func BenchmarkEncodeRecord(b *testing.B) {
	r := engine.Record{Kind: engine.RecGrant, Time: baseTime, Idem: "k", Leases: []engine.Lease{{
		ID: "7f0c1b8e-0000-4000-8000-000000000001", AgentID: "agent", SessionID: "s", Resource: "FILE:/src/main.go",
		Predicate: engine.Mutates, AcquiredAt: baseTime, ExpiresAt: baseTime + 60_000, TTL: 60_000, Fence: 1,
	}}}
	b.Run("fast", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf = appendRecord(buf[:0], &r)
		}
	})
	b.Run("library", func(b *testing.B) {
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		enc.UseCompactInts(true)
		for b.Loop() {
			buf.Reset()
			enc.Encode(&r)
		}
	})
}

// libraryDecode decodes body with the msgpack library alone.
func libraryDecode(body []byte) (engine.Record, error) {
	var rec engine.Record
	if err := msgpackwire.Check(body, maxMsgpackContainer); err != nil {
		return rec, err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(body))
	err := dec.Decode(&rec)
	return rec, err
}

func TestDecodeRecordFast(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 400 {
		r := randomRecord(rng)
		body := appendRecord(nil, &r)
		got, ok := decodeRecordFast(body)
		if !ok {
			t.Fatalf("record %d: the fast decoder refused the canonical encoding %x", i, body)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("record %d: fast decode\n%+v\nwant\n%+v", i, got, r)
		}
	}
	// Encodings the library accepts but the fast path leaves to it.
	for name, body := range map[string][]byte{
		"unknown key":   {0x81, 0xa1, 'z', 0x01},
		"nil string":    {0x81, 0xa1, 'a', 0xc0},
		"empty array":   {0x81, 0xa2, 'l', 's', 0x90},
		"duplicate key": {0x82, 0xa1, 'k', 0x01, 0xa1, 'k', 0x02},
		"float":         {0x81, 0xa1, 't', 0xca, 0, 0, 0, 0},
		"kind 300":      {0x81, 0xa1, 'k', 0xcd, 0x01, 0x2c},
	} {
		if _, ok := decodeRecordFast(body); ok {
			t.Errorf("decodeRecordFast(%s) accepted it; want the library to decide", name)
		}
	}
}

func FuzzDecodeRecordFast(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 8 {
		r := randomRecord(rng)
		if len(r.Resource) < 300 {
			f.Add(appendRecord(nil, &r))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, ok := decodeRecordFast(body)
		if !ok {
			return
		}
		want, err := libraryDecode(body)
		if err != nil {
			t.Fatalf("fast decoder accepted %x, which the library rejects: %v", body, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("fast decode of %x\n%+v\nlibrary\n%+v", body, got, want)
		}
	})
}

// TestAppendAllocs: appending a change's records (here a grant's and a
// release's) allocates nothing once the pending buffer has room: the
// records are encoded in place, and Append's copy of each (the one a long
// removal is split from) stays on the stack.
func TestAppendAllocs(t *testing.T) {
	if !fastEncode {
		t.Skip("the library encoder allocates")
	}
	w := newWorld(t, t.TempDir(), Options{Fsync: FsyncNever, CompactMinBytes: -1})
	grant := []engine.Record{{Kind: engine.RecGrant, Time: baseTime, Leases: []engine.Lease{{
		ID: "7f0c1b8e-0000-4000-8000-000000000001", AgentID: "agent", SessionID: "s", Resource: "FILE:/src/main.go",
		Predicate: engine.Mutates, AcquiredAt: baseTime, ExpiresAt: baseTime + 60_000, TTL: 60_000, Fence: 1,
	}}}}
	release := []engine.Record{{Kind: engine.RecRelease, Time: baseTime, LeaseIDs: []string{"7f0c1b8e-0000-4000-8000-000000000001"}}}
	w.st.Wait(w.st.Append(grant)) // the buffers grow once
	allocs := testing.AllocsPerRun(100, func() {
		w.st.mu.Lock()
		w.st.pending = w.st.pending[:0]
		w.st.mu.Unlock()
		w.st.Append(grant)
		w.st.Append(release)
	})
	if allocs != 0 {
		t.Errorf("appending a grant and a release allocated %.1f times; want 0", allocs)
	}
}
