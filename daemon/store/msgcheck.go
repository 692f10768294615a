package store

import (
	"encoding/binary"
	"fmt"
)

// Limits on the msgpack structure of a record body, checked before the body
// is decoded (snapshots are checked too, with no element cap: a snapshot
// holds every lease in one array). msgpack v5.4.1 sizes some slices from the declared element
// count without its own allocation limit, so a 20-byte body declaring 2^32
// leases would otherwise ask for hundreds of gigabytes. Real records nest
// four levels deep and hold at most maxIDsPerRecord ids (Append splits
// larger ones) or engine.MaxIntents leases.
const (
	maxMsgpackDepth     = 16
	maxMsgpackContainer = 1 << 16
)

// checkMsgpack verifies that b holds exactly one well-formed msgpack value
// whose every declared length fits in the bytes that remain, with at most
// maxMsgpackDepth levels of nesting and maxContainer elements per array or
// map. It allocates nothing and runs in time linear in len(b).
func checkMsgpack(b []byte, maxContainer uint64) error {
	var stack [maxMsgpackDepth + 1]int // values still expected per level
	depth := 0
	stack[0] = 1
	pos := 0
	for depth >= 0 {
		if stack[depth] == 0 {
			depth--
			continue
		}
		stack[depth]--
		if pos >= len(b) {
			return fmt.Errorf("msgpack value cut short at byte %d", pos)
		}
		c := b[pos]
		pos++
		var skip, elems int // bytes to skip; nested values that follow
		switch {
		case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			elems = 2 * int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			elems = int(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		case c == 0xcc || c == 0xd0:
			skip = 1
		case c == 0xcd || c == 0xd1:
			skip = 2
		case c == 0xca || c == 0xce || c == 0xd2:
			skip = 4
		case c == 0xcb || c == 0xcf || c == 0xd3:
			skip = 8
		case c >= 0xd4 && c <= 0xd8: // fixext 1, 2, 4, 8, 16 plus a type byte
			skip = 1 + 1<<(c-0xd4)
		case c == 0xc4 || c == 0xd9, c == 0xc5 || c == 0xda, c == 0xc6 || c == 0xdb,
			c == 0xc7, c == 0xc8, c == 0xc9,
			c == 0xdc, c == 0xdd, c == 0xde, c == 0xdf:
			size := 1 << lengthWidth(c) // bytes of the length field
			if len(b)-pos < size {
				return fmt.Errorf("msgpack length cut short at byte %d", pos)
			}
			var n uint64
			switch size {
			case 1:
				n = uint64(b[pos])
			case 2:
				n = uint64(binary.BigEndian.Uint16(b[pos:]))
			case 4:
				n = uint64(binary.BigEndian.Uint32(b[pos:]))
			}
			pos += size
			switch c {
			case 0xc7, 0xc8, 0xc9: // ext: type byte then data
				n++
				fallthrough
			case 0xc4, 0xc5, 0xc6, 0xd9, 0xda, 0xdb:
				if n > uint64(len(b)-pos) {
					return fmt.Errorf("msgpack string of %d bytes at byte %d exceeds the %d that remain", n, pos, len(b)-pos)
				}
				skip = int(n)
			case 0xde, 0xdf:
				n *= 2
				fallthrough
			default:
				if n > 2*maxContainer || n > uint64(len(b)-pos) {
					return fmt.Errorf("msgpack container of %d values at byte %d is larger than the record allows", n, pos)
				}
				elems = int(n)
			}
		default:
			return fmt.Errorf("msgpack byte 0x%02x at byte %d is not a valid type", c, pos-1)
		}
		if skip > len(b)-pos {
			return fmt.Errorf("msgpack value cut short at byte %d", pos)
		}
		pos += skip
		if elems > len(b)-pos {
			return fmt.Errorf("msgpack container of %d values at byte %d exceeds the %d bytes that remain", elems, pos, len(b)-pos)
		}
		if elems > 0 {
			if depth == maxMsgpackDepth {
				return fmt.Errorf("msgpack nesting deeper than %d at byte %d", maxMsgpackDepth, pos)
			}
			depth++
			stack[depth] = elems
		}
	}
	if pos != len(b) {
		return fmt.Errorf("%d trailing bytes after the msgpack value", len(b)-pos)
	}
	return nil
}

// lengthWidth returns log2 of the size of the length field that follows
// type byte c (str8/bin8/ext8: 1 byte; 16: 2 bytes; 32: 4 bytes).
func lengthWidth(c byte) int {
	switch c {
	case 0xc4, 0xc7, 0xd9:
		return 0
	case 0xc5, 0xc8, 0xda, 0xdc, 0xde:
		return 1
	}
	return 2
}
