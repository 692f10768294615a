package protocol

import (
	"bytes"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// appendWriter is an io.Writer that appends to a byte slice, so the msgpack
// encoder can write straight into a caller's frame buffer.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// encoder pairs a reusable msgpack encoder with the buffer it appends to.
type encoder struct {
	w   appendWriter
	enc *msgpack.Encoder
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = msgpack.NewEncoder(&e.w)
	e.enc.UseCompactInts(true)
	return e
}}

// getEncoder returns a pooled encoder that appends to dst.
func getEncoder(dst []byte) *encoder {
	e := encoders.Get().(*encoder)
	e.w.b = dst
	return e
}

// done returns the appended buffer and puts e back in the pool.
func (e *encoder) done() []byte {
	b := e.w.b
	e.w.b = nil
	encoders.Put(e)
	return b
}

// decoder pairs a reusable msgpack decoder with the reader it reads from.
type decoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

var decoders = sync.Pool{New: func() any {
	d := &decoder{}
	d.dec = msgpack.NewDecoder(&d.r)
	return d
}}

// getDecoder returns a pooled decoder reading body.
func getDecoder(body []byte) *decoder {
	d := decoders.Get().(*decoder)
	d.r.Reset(body)
	d.dec.Reset(&d.r)
	return d
}

func (d *decoder) release() {
	d.r.Reset(nil)
	decoders.Put(d)
}

// kindName names the msgpack type that starts with code c, for messages.
func kindName(c byte) string {
	switch {
	case c == msgpcode.Nil:
		return "nil"
	case c == msgpcode.True || c == msgpcode.False:
		return "a boolean"
	case isIntCode(c):
		return "an integer"
	case c == msgpcode.Float || c == msgpcode.Double:
		return "a float"
	case isStringCode(c):
		return "a string"
	case c == msgpcode.Bin8 || c == msgpcode.Bin16 || c == msgpcode.Bin32:
		return "binary"
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		return "an array"
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		return "a map"
	default:
		return "an extension"
	}
}

func isIntCode(c byte) bool {
	return msgpcode.IsFixedNum(c) || isUintCode(c) ||
		c == msgpcode.Int8 || c == msgpcode.Int16 || c == msgpcode.Int32 || c == msgpcode.Int64
}

func isUintCode(c byte) bool {
	return c == msgpcode.Uint8 || c == msgpcode.Uint16 || c == msgpcode.Uint32 || c == msgpcode.Uint64
}

func isStringCode(c byte) bool {
	return msgpcode.IsFixedString(c) || c == msgpcode.Str8 || c == msgpcode.Str16 || c == msgpcode.Str32
}

func isMapCode(c byte) bool {
	return msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32
}
