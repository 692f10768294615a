package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// ErrUnsupportedVersion is wrapped by errors for files written in a format
// version this klockd cannot read. It is never treated as damage.
var ErrUnsupportedVersion = errors.New("unsupported format version")

// File layout constants; FORMAT.md describes them byte by byte.
const (
	logMagic      = "KLOCKLOG"
	snapshotMagic = "KLOCKSNP"

	// FormatVersion is the version written in every log and snapshot header.
	// A reader refuses files with another version rather than guess.
	FormatVersion = 1

	logHeaderSize      = 24 // magic(8) version(4) generation(8) crc(4)
	snapshotHeaderSize = 32 // magic(8) version(4) generation(8) length(8) crc(4)
	frameHeaderSize    = 8  // length(4) crc(4)

	// MaxRecordSize caps the declared body length of one log record. A
	// record is derived from one request, itself capped by the frame limit,
	// so anything larger is damage, not data.
	MaxRecordSize = 4 << 20
)

// castagnoli is the CRC-32C table; CRC-32C has hardware support on amd64
// and arm64, so checksumming costs next to nothing on the write path.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendLogHeader appends the 24-byte header of log generation gen.
func appendLogHeader(dst []byte, gen uint64) []byte {
	start := len(dst)
	dst = append(dst, logMagic...)
	dst = binary.LittleEndian.AppendUint32(dst, FormatVersion)
	dst = binary.LittleEndian.AppendUint64(dst, gen)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// parseLogHeader checks a log header and returns its generation.
func parseLogHeader(b []byte) (uint64, error) {
	if len(b) < logHeaderSize {
		return 0, fmt.Errorf("klock: log header is %d bytes, want %d", len(b), logHeaderSize)
	}
	if string(b[:8]) != logMagic {
		return 0, fmt.Errorf("klock: not a klock log (magic %q, want %q)", b[:8], logMagic)
	}
	if crc32.Checksum(b[:20], castagnoli) != binary.LittleEndian.Uint32(b[20:24]) {
		return 0, fmt.Errorf("klock: log header checksum mismatch")
	}
	if v := binary.LittleEndian.Uint32(b[8:12]); v != FormatVersion {
		return 0, fmt.Errorf("klock: log format version %d: %w (this klockd reads version %d)", v, ErrUnsupportedVersion, FormatVersion)
	}
	return binary.LittleEndian.Uint64(b[12:20]), nil
}

// appendFrame appends one record frame: body length, CRC-32C over the
// length bytes and the body, then the body.
func appendFrame(dst, body []byte) []byte {
	var lb [4]byte
	binary.LittleEndian.PutUint32(lb[:], uint32(len(body)))
	sum := crc32.Update(crc32.Checksum(lb[:], castagnoli), castagnoli, body)
	dst = append(dst, lb[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, sum)
	return append(dst, body...)
}

// sealFrame fills in the header of frame, whose body follows its first
// frameHeaderSize bytes, as appendFrame would have written it.
func sealFrame(frame []byte) {
	body := frame[frameHeaderSize:]
	binary.LittleEndian.PutUint32(frame[:4], uint32(len(body)))
	sum := crc32.Update(crc32.Checksum(frame[:4], castagnoli), castagnoli, body)
	binary.LittleEndian.PutUint32(frame[4:8], sum)
}

// frameLength returns the declared body length in a frame header, and
// whether it is within 1..MaxRecordSize.
func frameLength(hdr []byte) (int, bool) {
	n := binary.LittleEndian.Uint32(hdr[:4])
	return int(n), n >= 1 && n <= MaxRecordSize
}

// frameChecksumOK reports whether body matches the CRC in hdr.
func frameChecksumOK(hdr, body []byte) bool {
	sum := crc32.Update(crc32.Checksum(hdr[:4], castagnoli), castagnoli, body)
	return sum == binary.LittleEndian.Uint32(hdr[4:8])
}

// validFrameAt reports whether b starts with one whole, intact frame.
func validFrameAt(b []byte) bool {
	if len(b) < frameHeaderSize {
		return false
	}
	n, ok := frameLength(b)
	if !ok || len(b)-frameHeaderSize < n {
		return false
	}
	return frameChecksumOK(b, b[frameHeaderSize:frameHeaderSize+n])
}

// appendSnapshotHeader appends the 32-byte snapshot header for body.
func appendSnapshotHeader(dst []byte, gen uint64, body []byte) []byte {
	dst, sum := snapshotHeaderStart(dst, gen, uint64(len(body)))
	return binary.LittleEndian.AppendUint32(dst, crc32.Update(sum, castagnoli, body))
}

// snapshotHeaderStart appends the snapshot header for a body of length
// bytes without its checksum, and returns the checksum so far: the
// header's last 4 bytes are it updated with the body.
func snapshotHeaderStart(dst []byte, gen, length uint64) ([]byte, uint32) {
	start := len(dst)
	dst = append(dst, snapshotMagic...)
	dst = binary.LittleEndian.AppendUint32(dst, FormatVersion)
	dst = binary.LittleEndian.AppendUint64(dst, gen)
	dst = binary.LittleEndian.AppendUint64(dst, length)
	return dst, crc32.Checksum(dst[start:], castagnoli)
}

// parseSnapshot checks a whole snapshot file and returns its generation and
// body. Every length is checked against len(b) before it is used.
func parseSnapshot(b []byte) (uint64, []byte, error) {
	gen, err := checkSnapshotHead(b, int64(len(b)))
	if err != nil {
		return 0, nil, err
	}
	body := b[snapshotHeaderSize:]
	if err := checkSnapshotSum(b, crc32.Update(crc32.Checksum(b[:28], castagnoli), castagnoli, body)); err != nil {
		return 0, nil, err
	}
	return gen, body, nil
}

// checkSnapshotHead checks the start of a snapshot file of size bytes (b
// holds at least its header, or the whole file when shorter): its size,
// magic and body length. It returns the generation.
func checkSnapshotHead(b []byte, size int64) (uint64, error) {
	if size < snapshotHeaderSize || len(b) < snapshotHeaderSize {
		return 0, fmt.Errorf("klock: snapshot is %d bytes, shorter than its %d-byte header", size, snapshotHeaderSize)
	}
	if string(b[:8]) != snapshotMagic {
		return 0, fmt.Errorf("klock: not a klock snapshot (magic %q, want %q)", b[:8], snapshotMagic)
	}
	gen := binary.LittleEndian.Uint64(b[12:20])
	n := binary.LittleEndian.Uint64(b[20:28])
	if n != uint64(size-snapshotHeaderSize) {
		return 0, fmt.Errorf("klock: snapshot declares %d body bytes but has %d", n, size-snapshotHeaderSize)
	}
	return gen, nil
}

// checkSnapshotSum checks a snapshot header's checksum against sum (its
// first 28 bytes and then the body), then its format version.
func checkSnapshotSum(head []byte, sum uint32) error {
	if sum != binary.LittleEndian.Uint32(head[28:32]) {
		return fmt.Errorf("klock: snapshot checksum mismatch")
	}
	if v := binary.LittleEndian.Uint32(head[8:12]); v != FormatVersion {
		return fmt.Errorf("klock: snapshot format version %d: %w (this klockd reads version %d)", v, ErrUnsupportedVersion, FormatVersion)
	}
	return nil
}
