package protocol

import (
	"bytes"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
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
