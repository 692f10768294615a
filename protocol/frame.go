package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the size of a frame's length prefix in bytes.
const HeaderSize = 4

// FrameError reports a frame whose declared length is 0 or above the cap.
// Such a stream cannot be resynchronised: the reader must answer BAD_FRAME
// and close the connection.
type FrameError struct {
	Length uint32 // the declared body length
	Max    int    // the cap in force
}

func (e *FrameError) Error() string {
	if e.Length == 0 {
		return "klock: frame length is 0; a frame body must be 1 byte or more"
	}
	return fmt.Sprintf("klock: frame length %d is over the maximum of %d bytes", e.Length, e.Max)
}

// ReadFrame reads one frame from r and returns its body. The body is read
// into buf when it fits, so the result is valid only until the next call
// that reuses buf. The declared length is checked against maxFrame before
// anything is allocated; a bad length gives a *FrameError. A stream that
// ends cleanly between frames gives io.EOF; one that ends inside a frame
// gives io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader, buf []byte, maxFrame int) ([]byte, error) {
	// The header is read into buf when it has room (the body overwrites
	// it): a local array would escape through r and cost an allocation
	// per frame.
	var hdr []byte
	if cap(buf) >= HeaderSize {
		hdr = buf[:HeaderSize]
	} else {
		hdr = make([]byte, HeaderSize)
	}
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr)
	if n == 0 || uint64(n) > uint64(maxFrame) {
		return nil, &FrameError{Length: n, Max: maxFrame}
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	body := buf[:n]
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return body, nil
}

// AppendFrame appends a frame holding body to dst and returns the result.
func AppendFrame(dst, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// beginFrame appends a placeholder length prefix to dst and returns the
// result and the offset of the prefix, for endFrame to fill in once the
// body has been appended after it.
func beginFrame(dst []byte) ([]byte, int) {
	off := len(dst)
	return append(dst, 0, 0, 0, 0), off
}

// endFrame writes the length of the body that follows the prefix at off.
func endFrame(dst []byte, off int) []byte {
	binary.BigEndian.PutUint32(dst[off:], uint32(len(dst)-off-HeaderSize))
	return dst
}
