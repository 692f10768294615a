package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// This file holds a small msgpack reader and writer over byte slices for
// the hot paths (request decoding, the common results): no reflection, no
// io.Reader, and every declared length checked against the bytes that are
// really there before it is trusted. Anything rarer goes through the
// msgpack library.

var errShort = errors.New("msgpack value runs past the end of the frame")

// reader reads msgpack values from b, starting at off.
type reader struct {
	b    []byte
	off  int
	text string // b as a string, made on first use; decoded strings slice it
}

// strOf returns b, the bytes just read, as a string. All strings of one
// reader share one copy of its bytes.
func (r *reader) strOf(b []byte) string {
	if r.text == "" {
		r.text = string(r.b)
	}
	return r.text[r.off-len(b) : r.off]
}

func (r *reader) rest() int { return len(r.b) - r.off }

// peek returns the type code of the next value.
func (r *reader) peek() (byte, error) {
	if r.off >= len(r.b) {
		return 0, errShort
	}
	return r.b[r.off], nil
}

// need checks that n more bytes are there.
func (r *reader) need(n int) error {
	if n < 0 || n > r.rest() {
		return errShort
	}
	return nil
}

// uintN reads a big-endian unsigned integer of n bytes (1, 2, 4 or 8).
func (r *reader) uintN(n int) (uint64, error) {
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

// containerLen reads a map or array header (depending on fix, c16, c32 and
// the fix mask) and checks that the declared count of elements, each at
// least one byte (per entries bytes), can fit in what is left.
func (r *reader) containerLen(fixLo, fixHi, c16, c32 byte, per int) (int, error) {
	c, err := r.peek()
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
		return 0, fmt.Errorf("expected %s, got %s", map[bool]string{true: "a map", false: "an array"}[per == 2], kindName(c))
	}
	if err != nil {
		return 0, err
	}
	if n > uint64(r.rest()/per) {
		return 0, errShort
	}
	return int(n), nil
}

func (r *reader) mapLen() (int, error)   { return r.containerLen(0x80, 0x8f, 0xde, 0xdf, 2) }
func (r *reader) arrayLen() (int, error) { return r.containerLen(0x90, 0x9f, 0xdc, 0xdd, 1) }

// strBytes reads a msgpack str and returns its bytes, aliasing r.b.
func (r *reader) strBytes() ([]byte, error) {
	c, err := r.peek()
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
		return nil, fmt.Errorf("expected a string, got %s", kindName(c))
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

// integer reads any msgpack integer. neg reports a negative value, whose
// magnitude is not returned; u is the value otherwise.
func (r *reader) integer() (u uint64, neg bool, err error) {
	c, err := r.peek()
	if err != nil {
		return 0, false, err
	}
	switch {
	case c <= 0x7f:
		r.off++
		return uint64(c), false, nil
	case c >= 0xe0:
		r.off++
		return 0, true, nil
	case c >= 0xcc && c <= 0xcf: // uint 8..64
		r.off++
		u, err = r.uintN(1 << (c - 0xcc))
		return u, false, err
	case c >= 0xd0 && c <= 0xd3: // int 8..64
		r.off++
		n := 1 << (c - 0xd0)
		u, err = r.uintN(n)
		if err != nil {
			return 0, false, err
		}
		v := int64(u)
		if shift := 64 - 8*n; shift > 0 {
			v = int64(u<<shift) >> shift // sign-extend
		}
		if v < 0 {
			return 0, true, nil
		}
		return uint64(v), false, nil
	}
	return 0, false, fmt.Errorf("expected an integer, got %s", kindName(c))
}

// boolean reads a msgpack bool.
func (r *reader) boolean() (bool, error) {
	c, err := r.peek()
	if err != nil {
		return false, err
	}
	if c != 0xc2 && c != 0xc3 {
		return false, fmt.Errorf("expected a boolean, got %s", kindName(c))
	}
	r.off++
	return c == 0xc3, nil
}

// skip skips one value of any type, nested ones included, without
// recursion: pending counts the values still to be skipped.
func (r *reader) skip() error {
	for pending := 1; pending > 0; pending-- {
		c, err := r.peek()
		if err != nil {
			return err
		}
		var size uint64 // bytes of payload after the header
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
			r.off++
		case c >= 0xa0 && c <= 0xbf, c == 0xd9, c == 0xda, c == 0xdb:
			_, err = r.strBytes()
		case c >= 0x80 && c <= 0x8f, c == 0xde, c == 0xdf:
			var n int
			n, err = r.mapLen()
			pending += 2 * n
		case c >= 0x90 && c <= 0x9f, c == 0xdc, c == 0xdd:
			var n int
			n, err = r.arrayLen()
			pending += n
		case c >= 0xc4 && c <= 0xc6: // bin 8/16/32
			r.off++
			size, err = r.uintN(1 << (c - 0xc4))
		case c >= 0xc7 && c <= 0xc9: // ext 8/16/32: length, then a type byte
			r.off++
			size, err = r.uintN(1 << (c - 0xc7))
			size++
		case c == 0xca:
			r.off, size = r.off+1, 4
		case c == 0xcb:
			r.off, size = r.off+1, 8
		case c >= 0xcc && c <= 0xd3:
			_, _, err = r.integer()
		case c >= 0xd4 && c <= 0xd8: // fixext 1..16, plus the type byte
			r.off, size = r.off+1, 1+(1<<(c-0xd4))
		default: // 0xc1, never used
			return fmt.Errorf("invalid msgpack code 0x%x", c)
		}
		if err != nil {
			return err
		}
		if size > 0 {
			if size > uint64(r.rest()) {
				return errShort
			}
			r.off += int(size)
		}
	}
	return nil
}

// Appenders, producing the same bytes as the msgpack library with compact
// integers.

func appendMapLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xde), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, 0xdf), uint32(n))
	}
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
	}
}

func appendStr(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
	}
}

// appendInt appends v as the msgpack library's compact encoding does.
func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendUint(b, uint64(v))
	}
	switch {
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, 0xd0, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
	}
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}
