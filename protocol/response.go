package protocol

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/internal/msgpackwire"
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
	dst = appendEnvelope(dst, id, true, "result")
	if a, ok := result.(wireAppender); ok {
		return endFrame(a.appendMsgpack(dst), off), nil
	}
	e := getEncoder(dst)
	err := e.enc.Encode(result)
	dst = e.done()
	if err != nil {
		return dst[:off], fmt.Errorf("klock: encoding %T: %w", result, err)
	}
	return endFrame(dst, off), nil
}

// AppendError appends one error response frame to dst. Bytes of message
// that are not UTF-8 are sent as '?'.
func AppendError(dst []byte, id uint64, code Code, message string) []byte {
	// A message may quote what a client sent; a msgpack str must hold
	// valid UTF-8 (strict decoders, like Python's, refuse anything else).
	if !utf8.ValidString(message) {
		message = strings.ToValidUTF8(message, "?")
	}
	dst, off := beginFrame(dst)
	dst = appendEnvelope(dst, id, false, "error")
	dst = msgpackwire.AppendMapLen(dst, 2)
	dst = msgpackwire.AppendStr(dst, "code")
	dst = msgpackwire.AppendStr(dst, string(code))
	dst = msgpackwire.AppendStr(dst, "message")
	dst = msgpackwire.AppendStr(dst, message)
	return endFrame(dst, off)
}

// appendEnvelope appends a response map's id and ok, and the key of the
// value that follows (result or error).
func appendEnvelope(dst []byte, id uint64, ok bool, key string) []byte {
	dst = msgpackwire.AppendMapLen(dst, 3)
	dst = msgpackwire.AppendStr(dst, "id")
	dst = msgpackwire.AppendUint(dst, id)
	dst = msgpackwire.AppendStr(dst, "ok")
	dst = msgpackwire.AppendBool(dst, ok)
	return msgpackwire.AppendStr(dst, key)
}

// DecodeResponse decodes a response body into resp. resp.Result aliases
// nothing in body: it may be kept after body is reused.
func DecodeResponse(body []byte, resp *Response) error {
	*resp = Response{}
	if err := decodeResponse(body, resp); err != nil {
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
	if wd, ok := v.(wireDecoder); ok {
		if err := wd.decodeMsgpack(newReader(raw)); err != nil {
			return fmt.Errorf("klock: malformed %T result: %w", v, err)
		}
		return nil
	}
	d := getDecoder(raw)
	defer d.release()
	if err := d.dec.Decode(v); err != nil {
		return fmt.Errorf("klock: malformed %T result: %w", v, err)
	}
	return nil
}
