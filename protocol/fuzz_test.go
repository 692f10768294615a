package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrame feeds arbitrary streams to the frame reader, as one read and
// in small pieces: it must never panic, never return a body over the cap,
// and never allocate for a length it has not checked.
func FuzzReadFrame(f *testing.F) {
	for _, s := range []string{vecAcquire, vecGrant, "00000000", "ffffffff", "00000001"} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxFrame = 4096
		for _, r := range []io.Reader{bytes.NewReader(data), &pieceReader{data: data}} {
			for {
				body, err := ReadFrame(r, nil, maxFrame)
				if err != nil {
					var ferr *FrameError
					if !errors.As(err, &ferr) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
						t.Fatalf("ReadFrame: unexpected error %v", err)
					}
					break
				}
				if len(body) == 0 || len(body) > maxFrame {
					t.Fatalf("ReadFrame returned %d bytes; cap %d", len(body), maxFrame)
				}
			}
		}
	})
}

// pieceReader returns data a few bytes at a time.
type pieceReader struct {
	data []byte
	n    int
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	r.n = r.n%3 + 1
	n := copy(p[:min(len(p), r.n)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// FuzzDecodeRequest feeds arbitrary bodies to the request decoder: it must
// never panic, and every failure is a *Error with BAD_REQUEST or
// INVALID_ARGUMENT; whatever decodes re-encodes and decodes to the same.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{vecRegister, vecAcquire, vecCount} {
		b, _ := hex.DecodeString(s)
		f.Add(b[HeaderSize:])
	}
	f.Add([]byte{0x81, 0xa4, 'a', 'r', 'g', 's', 0x81, 0xa7, 'i', 'n', 't', 'e', 'n', 't', 's', 0x91, 0x80})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, body []byte) {
		var req Request
		err := DecodeRequest(body, &req)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) || (perr.Code != CodeBadRequest && perr.Code != CodeInvalidArgument) {
				t.Fatalf("DecodeRequest(%x) = %v; want BAD_REQUEST or INVALID_ARGUMENT", body, err)
			}
			return
		}
		frame, err := AppendRequest(nil, req.ID, req.Op, &req.Args)
		if err != nil {
			t.Fatalf("AppendRequest: %v", err)
		}
		var again Request
		if err := DecodeRequest(frame[HeaderSize:], &again); err != nil {
			t.Fatalf("re-decoding %x: %v", frame, err)
		}
		if again.ID != req.ID || again.Op != req.Op || again.Args.present != req.Args.present {
			t.Fatalf("round trip changed the request: %+v != %+v", again, req)
		}
	})
}
