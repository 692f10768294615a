package protocol

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Error is a protocol error: a code from README.md and a message for humans.
// It is what a response's error map carries.
type Error struct {
	Code    Code   `msgpack:"code"`
	Message string `msgpack:"message"`
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "klock: " + string(e.Code)
	}
	return e.Message
}

// Errorf returns a *Error with code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Response is a decoded response frame. Result holds the raw msgpack of
// the result map, to be decoded into the op's result type with
// DecodeResult.
type Response struct {
	ID     uint64             `msgpack:"id"`
	OK     bool               `msgpack:"ok"`
	Result msgpack.RawMessage `msgpack:"result"`
	Error  *Error             `msgpack:"error"`
}

// AppendResult appends one successful response frame to dst.
func AppendResult(dst []byte, id uint64, result any) ([]byte, error) {
	dst, off := beginFrame(dst)
	e := getEncoder(dst)
	enc := e.enc
	_ = enc.EncodeMapLen(3)
	_ = enc.EncodeString("id")
	_ = enc.EncodeUint(id)
	_ = enc.EncodeString("ok")
	_ = enc.EncodeBool(true)
	_ = enc.EncodeString("result")
	err := enc.Encode(result)
	dst = e.done()
	if err != nil {
		return dst[:off], fmt.Errorf("klock: encoding %T: %w", result, err)
	}
	return endFrame(dst, off), nil
}

// AppendError appends one error response frame to dst.
func AppendError(dst []byte, id uint64, code Code, message string) []byte {
	dst, off := beginFrame(dst)
	e := getEncoder(dst)
	enc := e.enc
	_ = enc.EncodeMapLen(3)
	_ = enc.EncodeString("id")
	_ = enc.EncodeUint(id)
	_ = enc.EncodeString("ok")
	_ = enc.EncodeBool(false)
	_ = enc.EncodeString("error")
	_ = enc.EncodeMapLen(2)
	_ = enc.EncodeString("code")
	_ = enc.EncodeString(string(code))
	_ = enc.EncodeString("message")
	_ = enc.EncodeString(message)
	return endFrame(e.done(), off)
}

// DecodeResponse decodes a response body into resp. resp.Result aliases
// nothing in body: it may be kept after body is reused.
func DecodeResponse(body []byte, resp *Response) error {
	*resp = Response{}
	d := getDecoder(body)
	defer d.release()
	if err := d.dec.Decode(resp); err != nil {
		return fmt.Errorf("klock: malformed response: %w", err)
	}
	if resp.ID == 0 && resp.Error == nil {
		return fmt.Errorf("klock: malformed response: no id")
	}
	if !resp.OK && resp.Error == nil {
		return fmt.Errorf("klock: malformed response %d: ok is false and no error is given", resp.ID)
	}
	return nil
}

// DecodeResult decodes a response's raw result into v, a pointer to one of
// the result types.
func DecodeResult(raw msgpack.RawMessage, v any) error {
	d := getDecoder(raw)
	defer d.release()
	if err := d.dec.Decode(v); err != nil {
		return fmt.Errorf("klock: malformed %T result: %w", v, err)
	}
	return nil
}
