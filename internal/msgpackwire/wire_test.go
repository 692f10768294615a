package msgpackwire

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"pgregory.net/rapid"
)

// library encodes v as the msgpack library does with compact integers: the
// reference every appender is held to, byte for byte.
func library(t *rapid.T, v any) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		t.Fatalf("library encoding %#v: %v", v, err)
	}
	return buf.Bytes()
}

// edgeInt draws integers around every boundary of msgpack's integer forms.
func edgeInt() *rapid.Generator[int64] {
	var edges []int64
	for _, e := range []int64{0, 31, 32, 127, 128, 255, 256, 65535, 65536, math.MaxInt32, math.MaxUint32, math.MaxInt64,
		-32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt64} {
		edges = append(edges, e-1, e, e+1)
	}
	return rapid.OneOf(rapid.SampledFrom(edges), rapid.Int64())
}

// edgeLen draws lengths around the boundaries of msgpack's str, array and
// map headers.
func edgeLen() *rapid.Generator[int] {
	return rapid.OneOf(rapid.SampledFrom([]int{0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 65535, 65536, 65537}), rapid.IntRange(0, 70000))
}

func TestAppendersMatchLibrary(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		i := edgeInt().Draw(t, "int")
		if got, want := AppendInt(nil, i), library(t, i); !bytes.Equal(got, want) {
			t.Fatalf("AppendInt(%d) = %x; the library writes %x", i, got, want)
		}
		u := uint64(i)
		if got, want := AppendUint(nil, u), library(t, u); !bytes.Equal(got, want) {
			t.Fatalf("AppendUint(%d) = %x; the library writes %x", u, got, want)
		}
		s := strings.Repeat("é", edgeLen().Draw(t, "strlen")/2) + rapid.String().Draw(t, "str")
		if got, want := AppendStr(nil, s), library(t, s); !bytes.Equal(got, want) {
			t.Fatalf("AppendStr(%d bytes) starts %x; the library writes %x", len(s), got[:min(len(got), 8)], want[:min(len(want), 8)])
		}
		b := rapid.Bool().Draw(t, "bool")
		if got, want := AppendBool(nil, b), library(t, b); !bytes.Equal(got, want) {
			t.Fatalf("AppendBool(%v) = %x; the library writes %x", b, got, want)
		}
		n := edgeLen().Draw(t, "len")
		var want bytes.Buffer
		enc := msgpack.NewEncoder(&want)
		if err := enc.EncodeArrayLen(n); err != nil {
			t.Fatal(err)
		}
		if got := AppendArrayLen(nil, n); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("AppendArrayLen(%d) = %x; the library writes %x", n, got, want.Bytes())
		}
		want.Reset()
		if err := enc.EncodeMapLen(n); err != nil {
			t.Fatal(err)
		}
		if got := AppendMapLen(nil, n); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("AppendMapLen(%d) = %x; the library writes %x", n, got, want.Bytes())
		}
	})
}

// value draws a msgpack value of any type the library writes, nested at
// most depth levels.
func value(depth int) *rapid.Generator[any] {
	scalar := rapid.OneOf(
		rapid.Just[any](nil),
		rapid.Map(rapid.Bool(), func(b bool) any { return b }),
		rapid.Map(edgeInt(), func(i int64) any { return i }),
		rapid.Map(rapid.Uint64(), func(u uint64) any { return u }),
		rapid.Map(rapid.Float64(), func(f float64) any { return f }),
		rapid.Map(rapid.Float32(), func(f float32) any { return f }),
		rapid.Map(rapid.String(), func(s string) any { return s }),
		rapid.Map(rapid.SliceOf(rapid.Byte()), func(b []byte) any { return b }),
	)
	if depth == 0 {
		return scalar
	}
	return rapid.OneOf(scalar, scalar, scalar,
		rapid.Map(rapid.SliceOfN(value(depth-1), 0, 8), func(s []any) any { return s }),
		rapid.Map(rapid.MapOfN(rapid.String(), value(depth-1), 0, 8), func(m map[string]any) any { return m }))
}

// TestReaderReadsWhatItsAppendersWrite: every value the appenders write
// reads back the same, in order, to the last byte.
func TestReaderReadsWhatItsAppendersWrite(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ints := rapid.SliceOfN(edgeInt(), 0, 10).Draw(t, "ints")
		strs := rapid.SliceOfN(rapid.String(), 0, 10).Draw(t, "strs")
		b := AppendMapLen(nil, len(ints))
		b = AppendArrayLen(b, len(strs))
		for _, i := range ints {
			b = AppendBool(AppendUint(AppendInt(b, i), uint64(i)), i%2 == 0)
		}
		for _, s := range strs {
			b = AppendStr(b, s)
		}
		var r Reader
		r.Reset(b)
		if n, err := r.MapLen(); err != nil || n != len(ints) {
			t.Fatalf("MapLen() = %d, %v; want %d", n, err, len(ints))
		}
		if n, err := r.ArrayLen(); err != nil || n != len(strs) {
			t.Fatalf("ArrayLen() = %d, %v; want %d", n, err, len(strs))
		}
		for _, i := range ints {
			if v, err := r.Int(); err != nil || v != i {
				t.Fatalf("Int() = %d, %v; want %d", v, err, i)
			}
			u, neg, err := r.Integer()
			if err != nil || neg || u != uint64(i) {
				t.Fatalf("Integer() = %d, %v, %v; want %d", u, neg, err, uint64(i))
			}
			if v, err := r.Bool(); err != nil || v != (i%2 == 0) {
				t.Fatalf("Bool() = %v, %v; want %v", v, err, i%2 == 0)
			}
		}
		for _, s := range strs {
			p, err := r.StrBytes()
			if err != nil || r.StringOf(p) != s {
				t.Fatalf("StrBytes() = %q, %v; want %q", p, err, s)
			}
		}
		if r.Rest() != 0 {
			t.Fatalf("%d bytes left after the last value", r.Rest())
		}
	})
}

// TestReaderAgreesWithLibrary: for any value the library writes, Raw reads
// exactly its bytes, Check accepts it (and not it with a byte after it),
// integers read as the library reads them, and every cut-short prefix is an
// error, never a panic or a read past the end.
func TestReaderAgreesWithLibrary(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		v := value(3).Draw(t, "value")
		enc, err := msgpack.Marshal(v) // not compact: integers of every width
		if err != nil {
			t.Fatal(err)
		}
		var r Reader
		r.Reset(append(enc, 0xc0))
		raw, err := r.Raw()
		if err != nil || !bytes.Equal(raw, enc) {
			t.Fatalf("Raw() of %x = %x, %v", enc, raw, err)
		}
		if err := Check(enc, uint64(len(enc))); err != nil {
			t.Fatalf("Check(%x) = %v", enc, err)
		}
		if err := Check(append(enc, 0xc0), uint64(len(enc))); err == nil {
			t.Fatalf("Check(%x with a byte after it) succeeded", enc)
		}
		for cut := range len(enc) {
			r.Reset(enc[:cut])
			if err := r.Skip(); err == nil {
				t.Fatalf("Skip() of %x cut to %d bytes succeeded", enc, cut)
			}
			if err := Check(enc[:cut], uint64(len(enc))); err == nil {
				t.Fatalf("Check() of %x cut to %d bytes succeeded", enc, cut)
			}
		}
		r.Reset(enc)
		if c, _ := r.Peek(); IsInt(c) {
			var want int64
			libErr := msgpack.Unmarshal(enc, &want)
			got, err := r.Int()
			if u, ok := v.(uint64); ok && u > math.MaxInt64 {
				if err == nil {
					t.Fatalf("Int() of %x = %d; want an error for %d", enc, got, u)
				}
			} else if libErr != nil || err != nil || got != want {
				t.Fatalf("Int() of %x = %d, %v; the library reads %d, %v", enc, got, err, want, libErr)
			}
		}
	})
}

// TestCheckLimits: Check holds an array or a map to maxContainer elements
// and nesting to MaxDepth, whatever the input's length.
func TestCheckLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    any
		max  uint64
		ok   bool
	}{
		{"array at the cap", []int{1, 2, 3}, 3, true},
		{"array over the cap", []int{1, 2, 3}, 2, false},
		{"map at the cap", map[string]int{"a": 1, "b": 2}, 2, true},
		{"map over the cap", map[string]int{"a": 1, "b": 2}, 1, false},
		{"nested array over the cap", []any{1, []int{1, 2, 3}}, 2, false},
	} {
		enc, err := msgpack.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if err := Check(enc, tc.max); (err == nil) != tc.ok {
			t.Errorf("%s: Check(%x, %d) = %v; want ok=%v", tc.name, enc, tc.max, err, tc.ok)
		}
	}
	deep := append(bytes.Repeat([]byte{0x91}, MaxDepth), 0x01) // MaxDepth arrays, then an int
	if err := Check(deep, 1); err != nil {
		t.Errorf("Check(%d nested arrays) = %v", MaxDepth, err)
	}
	if err := Check(append([]byte{0x91}, deep...), 1); err == nil {
		t.Errorf("Check(%d nested arrays) succeeded; MaxDepth is %d", MaxDepth+1, MaxDepth)
	}
}

// FuzzReaderSkip: Skip never panics, and never claims more bytes than it
// was given.
func FuzzReaderSkip(f *testing.F) {
	for _, seed := range []any{nil, 1, -1, "s", []any{1, "a", map[string]any{"b": []byte{1}}}, 1.5} {
		b, _ := msgpack.Marshal(seed)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Reader
		r.Reset(b)
		raw, err := r.Raw()
		if err == nil && len(raw) > len(b) {
			t.Fatalf("Raw() returned %d bytes of %d", len(raw), len(b))
		}
	})
}
