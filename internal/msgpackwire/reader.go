package msgpackwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// ErrShort is the error for a value, or a length it declares, that runs
// past the end of the input.
var ErrShort = errors.New("msgpack value runs past the end of the frame")

// Reader reads msgpack values from a byte slice, in order. Its zero value
// reads nothing; Reset gives it input. A method that fails leaves the
// Reader where it was or past part of the value: after an error, only
// Reset is meaningful.
type Reader struct {
	b    []byte
	off  int
	text string // b as a string, made on first use by StringOf
}

// Reset makes r read b from its start.
func (r *Reader) Reset(b []byte) { *r = Reader{b: b} }

// Rest returns the count of bytes not read yet.
func (r *Reader) Rest() int { return len(r.b) - r.off }

// Peek returns the type byte of the next value without reading it.
func (r *Reader) Peek() (byte, error) {
	if r.off >= len(r.b) {
		return 0, ErrShort
	}
	return r.b[r.off], nil
}

// StringOf returns b, which must be the slice the last StrBytes returned,
// as a string. All strings of one input share one copy of it, so many short
// strings cost one allocation; they keep the whole input alive.
func (r *Reader) StringOf(b []byte) string {
	if r.text == "" {
		r.text = string(r.b)
	}
	return r.text[r.off-len(b) : r.off]
}

// need checks that n more bytes are there.
func (r *Reader) need(n int) error {
	if n < 0 || n > r.Rest() {
		return ErrShort
	}
	return nil
}

// uintN reads a big-endian unsigned integer of n bytes (1, 2, 4 or 8).
func (r *Reader) uintN(n int) (uint64, error) {
	if err := r.need(n); err != nil {
		return 0, err
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	switch n {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(b)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(b)), nil
	default:
		return binary.BigEndian.Uint64(b), nil
	}
}

// containerLen reads a map or array header and checks that the declared
// count of elements, each at least one byte (per bytes an entry), can fit
// in what is left.
func (r *Reader) containerLen(fixLo, fixHi, c16, c32 byte, per int) (int, error) {
	c, err := r.Peek()
	if err != nil {
		return 0, err
	}
	var n uint64
	switch {
	case c >= fixLo && c <= fixHi:
		r.off++
		n = uint64(c - fixLo)
	case c == c16:
		r.off++
		n, err = r.uintN(2)
	case c == c32:
		r.off++
		n, err = r.uintN(4)
	default:
		want := "an array"
		if per == 2 {
			want = "a map"
		}
		return 0, fmt.Errorf("expected %s, got %s", want, KindName(c))
	}
	if err != nil {
		return 0, err
	}
	if n > uint64(r.Rest()/per) {
		return 0, ErrShort
	}
	return int(n), nil
}

// MapLen reads a map header and returns its count of entries, which the
// remaining input is checked to be long enough for.
func (r *Reader) MapLen() (int, error) { return r.containerLen(0x80, 0x8f, 0xde, 0xdf, 2) }

// ArrayLen reads an array header and returns its count of elements, which
// the remaining input is checked to be long enough for.
func (r *Reader) ArrayLen() (int, error) { return r.containerLen(0x90, 0x9f, 0xdc, 0xdd, 1) }

// StrBytes reads a str and returns its bytes, which alias the input.
func (r *Reader) StrBytes() ([]byte, error) {
	c, err := r.Peek()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c >= 0xa0 && c <= 0xbf:
		r.off++
		n = uint64(c & 0x1f)
	case c == 0xd9:
		r.off++
		n, err = r.uintN(1)
	case c == 0xda:
		r.off++
		n, err = r.uintN(2)
	case c == 0xdb:
		r.off++
		n, err = r.uintN(4)
	default:
		return nil, fmt.Errorf("expected a string, got %s", KindName(c))
	}
	if err != nil {
		return nil, err
	}
	if err := r.need(int(min(n, math.MaxInt32))); err != nil {
		return nil, err
	}
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s, nil
}

// Integer reads any integer. neg reports a negative value, whose magnitude
// is not returned; u is the value otherwise.
func (r *Reader) Integer() (u uint64, neg bool, err error) {
	u, _, neg, err = r.integer()
	return u, neg, err
}

// Int reads any integer that fits an int64.
func (r *Reader) Int() (int64, error) {
	u, v, neg, err := r.integer()
	switch {
	case err != nil || neg:
		return v, err
	case u > math.MaxInt64:
		return 0, fmt.Errorf("integer %d does not fit an int64", u)
	}
	return int64(u), nil
}

// integer reads any integer: u is its value when it is not negative, v
// when it is.
func (r *Reader) integer() (u uint64, v int64, neg bool, err error) {
	c, err := r.Peek()
	if err != nil {
		return 0, 0, false, err
	}
	switch {
	case c <= 0x7f:
		r.off++
		return uint64(c), 0, false, nil
	case c >= 0xe0:
		r.off++
		return 0, int64(int8(c)), true, nil
	case c >= 0xcc && c <= 0xcf: // uint 8..64
		r.off++
		u, err = r.uintN(1 << (c - 0xcc))
		return u, 0, false, err
	case c >= 0xd0 && c <= 0xd3: // int 8..64
		r.off++
		n := 1 << (c - 0xd0)
		u, err = r.uintN(n)
		if err != nil {
			return 0, 0, false, err
		}
		v = int64(u)
		if shift := 64 - 8*n; shift > 0 {
			v = int64(u<<shift) >> shift // sign-extend
		}
		if v < 0 {
			return 0, v, true, nil
		}
		return uint64(v), 0, false, nil
	}
	return 0, 0, false, fmt.Errorf("expected an integer, got %s", KindName(c))
}

// Bool reads a bool.
func (r *Reader) Bool() (bool, error) {
	c, err := r.Peek()
	if err != nil {
		return false, err
	}
	if c != msgpcode.False && c != msgpcode.True {
		return false, fmt.Errorf("expected a boolean, got %s", KindName(c))
	}
	r.off++
	return c == msgpcode.True, nil
}

// SkipNil reads a nil if one is next, and reports whether it did.
func (r *Reader) SkipNil() (bool, error) {
	c, err := r.Peek()
	if err != nil || c != msgpcode.Nil {
		return false, err
	}
	r.off++
	return true, nil
}

// Raw reads one value of any type and returns its bytes, which alias the
// input.
func (r *Reader) Raw() ([]byte, error) {
	start := r.off
	if err := r.Skip(); err != nil {
		return nil, err
	}
	return r.b[start:r.off], nil
}

// header reads the type byte and any length field of the next value. It
// returns the bytes of payload that follow and the count of values nested
// in it (two per map entry), neither checked against the input yet.
func (r *Reader) header() (size, nested uint64, err error) {
	c, err := r.Peek()
	if err != nil {
		return 0, 0, err
	}
	r.off++
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
	case c >= 0x80 && c <= 0x8f:
		nested = 2 * uint64(c&0x0f)
	case c >= 0x90 && c <= 0x9f:
		nested = uint64(c & 0x0f)
	case c >= 0xa0 && c <= 0xbf:
		size = uint64(c & 0x1f)
	case c >= 0xc4 && c <= 0xc6: // bin 8/16/32
		size, err = r.uintN(1 << (c - 0xc4))
	case c >= 0xc7 && c <= 0xc9: // ext 8/16/32: length, then a type byte
		size, err = r.uintN(1 << (c - 0xc7))
		size++
	case c == 0xca:
		size = 4
	case c == 0xcb:
		size = 8
	case c >= 0xcc && c <= 0xd3: // uint 8..64, int 8..64
		size = 1 << ((c - 0xcc) & 3)
	case c >= 0xd4 && c <= 0xd8: // fixext 1..16, plus the type byte
		size = 1 + 1<<(c-0xd4)
	case c >= 0xd9 && c <= 0xdb: // str 8/16/32
		size, err = r.uintN(1 << (c - 0xd9))
	case c == 0xdc || c == 0xdd: // array 16/32
		nested, err = r.uintN(2 << (c - 0xdc))
	case c == 0xde || c == 0xdf: // map 16/32
		nested, err = r.uintN(2 << (c - 0xde))
		nested *= 2
	default: // 0xc1, never used
		r.off--
		return 0, 0, fmt.Errorf("invalid msgpack code 0x%x", c)
	}
	return size, nested, err
}

// Skip reads one value of any type, nested ones included, without
// recursion: pending counts the values still to be skipped.
func (r *Reader) Skip() error {
	for pending := uint64(1); pending > 0; pending-- {
		size, nested, err := r.header()
		if err != nil {
			return err
		}
		if size > uint64(r.Rest()) || nested > uint64(r.Rest()) {
			return ErrShort // each nested value takes at least a byte
		}
		r.off += int(size)
		pending += nested
	}
	return nil
}

// MaxDepth is how deeply Check lets values nest.
const MaxDepth = 16

// Check verifies that b holds exactly one well-formed msgpack value: every
// length it declares fits in the bytes that remain, it nests at most
// MaxDepth levels, and no array or map holds more than maxContainer
// elements. It allocates nothing and takes time linear in len(b). Run it
// before a decoder that sizes slices from declared counts, as msgpack/v5
// does without a limit of its own: a 20-byte body declaring 2^32 elements
// would otherwise ask for gigabytes.
func Check(b []byte, maxContainer uint64) error {
	var stack [MaxDepth + 1]uint64 // values still expected per level
	r := Reader{b: b}
	depth := 0
	stack[0] = 1
	for depth >= 0 {
		if stack[depth] == 0 {
			depth--
			continue
		}
		stack[depth]--
		at := r.off
		size, nested, err := r.header()
		if err != nil {
			return fmt.Errorf("msgpack value at byte %d: %w", at, err)
		}
		if size > uint64(r.Rest()) {
			return fmt.Errorf("msgpack value at byte %d declares %d bytes; %d remain", at, size, r.Rest())
		}
		r.off += int(size)
		if nested == 0 {
			continue
		}
		entries := nested
		if c := b[at]; c >= 0x80 && c <= 0x8f || c == 0xde || c == 0xdf {
			entries /= 2 // a key and a value each
		}
		if entries > maxContainer {
			return fmt.Errorf("msgpack container at byte %d holds %d elements; at most %d are allowed", at, entries, maxContainer)
		}
		if nested > uint64(r.Rest()) {
			return fmt.Errorf("msgpack container at byte %d declares %d values; %d bytes remain", at, nested, r.Rest())
		}
		if depth == MaxDepth {
			return fmt.Errorf("msgpack nesting deeper than %d at byte %d", MaxDepth, at)
		}
		depth++
		stack[depth] = nested
	}
	if r.Rest() != 0 {
		return fmt.Errorf("%d trailing bytes after the msgpack value", r.Rest())
	}
	return nil
}
