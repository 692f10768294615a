package store

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxTailScan bounds how much of a log, after a bad record, is read to tell
// a torn tail from damage in the middle. A torn tail is at most one partial
// record (or a run of zeros left by a power loss); more than this is never
// treated as one.
const maxTailScan = 64 << 20

// maxScanWork bounds the bytes checksummed while looking for an intact record
// after damage, so hostile input cannot make the scan quadratic.
const maxScanWork = 256 << 20

// DamageError reports a log record that failed its checks. Offset is where
// the bad record starts: everything before it is intact.
type DamageError struct {
	Offset int64
	Reason string
	// Torn reports that nothing intact follows the bad record: a crash cut
	// the last write short (or left zeros after it). Recovery cuts a torn
	// tail at Offset with a warning; any other damage stops recovery unless
	// the operator chose --recover=truncate.
	Torn bool
}

// Error says where the damage is and whether it is a torn tail.
func (e *DamageError) Error() string {
	if e.Torn {
		return fmt.Sprintf("klock: torn record at offset %d: %s", e.Offset, e.Reason)
	}
	return fmt.Sprintf("klock: damaged record at offset %d, followed by intact records: %s", e.Offset, e.Reason)
}

// LogReader reads record bodies from a log stream, checking every length and
// checksum. It never allocates more than a record's declared length, and
// only as its bytes actually arrive.
type LogReader struct {
	r   *bufio.Reader
	gen uint64
	off int64 // offset of the next record
	buf []byte
	err error // sticky
}

// NewLogReader reads and checks the log header from r.
func NewLogReader(r io.Reader) (*LogReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [logHeaderSize]byte
	if n, err := io.ReadFull(br, hdr[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, &DamageError{Offset: 0, Reason: fmt.Sprintf("log header cut short at %d bytes", n), Torn: true}
		}
		return nil, err
	}
	gen, err := parseLogHeader(hdr[:])
	if err != nil {
		if errors.Is(err, ErrUnsupportedVersion) {
			return nil, err
		}
		lr := &LogReader{r: br}
		return nil, lr.damage(hdr[:], strings.TrimPrefix(err.Error(), "klock: "))
	}
	return &LogReader{r: br, gen: gen, off: logHeaderSize}, nil
}

// Generation returns the generation written in the log header.
func (lr *LogReader) Generation() uint64 { return lr.gen }

// Offset returns the offset just past the last intact record returned.
func (lr *LogReader) Offset() int64 { return lr.off }

// Next returns the next record body, valid until the following call. It
// returns io.EOF at a clean end, a *DamageError for a bad record (and from
// then on), or the reader's own error.
func (lr *LogReader) Next() ([]byte, error) {
	if lr.err != nil {
		return nil, lr.err
	}
	body, err := lr.next()
	if err != nil {
		lr.err = err
		return nil, err
	}
	return body, nil
}

func (lr *LogReader) next() ([]byte, error) {
	var hdr [frameHeaderSize]byte
	n, err := io.ReadFull(lr.r, hdr[:])
	switch {
	case err == io.EOF:
		return nil, io.EOF
	case err == io.ErrUnexpectedEOF:
		return nil, lr.damage(hdr[:n], "record header cut short")
	case err != nil:
		return nil, err
	}
	size, ok := frameLength(hdr[:])
	if !ok {
		return nil, lr.damage(hdr[:], fmt.Sprintf("record length %d out of range 1..%d", size, MaxRecordSize))
	}
	body, err := lr.readBody(size)
	if err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			frame := append(hdr[:], body...)
			return nil, lr.damage(frame, fmt.Sprintf("record of %d bytes cut short at %d", size, len(body)))
		}
		return nil, err
	}
	if !frameChecksumOK(hdr[:], body) {
		frame := append(hdr[:], body...)
		return nil, lr.damage(frame, "checksum mismatch")
	}
	lr.off += int64(frameHeaderSize + size)
	return body, nil
}

// readBody reads size bytes, growing the buffer only as data arrives so a
// hostile length cannot force a large allocation up front.
func (lr *LogReader) readBody(size int) ([]byte, error) {
	const chunk = 64 << 10
	lr.buf = lr.buf[:0]
	for len(lr.buf) < size {
		want := min(size-len(lr.buf), chunk)
		start := len(lr.buf)
		lr.buf = append(lr.buf, make([]byte, want)...)
		n, err := io.ReadFull(lr.r, lr.buf[start:])
		lr.buf = lr.buf[:start+n]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return lr.buf, err
		}
	}
	return lr.buf, nil
}

// damage builds the error for a bad record starting at lr.off whose bytes
// read so far are frame. It reads what follows to decide whether the damage
// is a torn tail: torn when no intact record starts anywhere after the bad
// record's first byte.
func (lr *LogReader) damage(frame []byte, reason string) error {
	rest := bytes.NewBuffer(append([]byte(nil), frame...))
	n, err := io.Copy(rest, io.LimitReader(lr.r, maxTailScan+1))
	if err != nil {
		return err
	}
	d := &DamageError{Offset: lr.off, Reason: reason}
	if n <= maxTailScan {
		d.Torn = !intactFrameAfter(rest.Bytes())
	}
	return d
}

// intactFrameAfter reports whether an intact frame starts at any offset
// after the first byte of b, or whether the scan gave up (which counts as
// found, the safe answer).
func intactFrameAfter(b []byte) bool {
	if len(bytes.TrimLeft(b, "\x00")) == 0 {
		return false // zeros left by a power loss after the last write
	}
	work := 0
	for i := 1; i+frameHeaderSize <= len(b); i++ {
		n, ok := frameLength(b[i:])
		if !ok || len(b)-i-frameHeaderSize < n {
			continue
		}
		if work += n; work > maxScanWork {
			return true
		}
		if validFrameAt(b[i:]) {
			return true
		}
	}
	return false
}

// IsTorn reports whether err is a *DamageError for a torn tail.
func IsTorn(err error) bool {
	var d *DamageError
	return errors.As(err, &d) && d.Torn
}
