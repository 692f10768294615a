package protocol

import (
	"strings"
	"testing"
)

// TestASCIIPrefixStopsAtEveryOtherByte: asciiPrefix covers the whole
// words before the first byte outside 0x20..0x7e, whatever that byte and
// wherever it is, and CheckText answers as its loop does from byte 0.
func TestASCIIPrefixStopsAtEveryOtherByte(t *testing.T) {
	const n = 27 // three words and three bytes
	for pos := 0; pos < n; pos++ {
		for b := 0; b < 256; b++ {
			s := []byte(strings.Repeat("a~ /Zz09", 4)[:n])
			s[pos] = byte(b)
			want := n / 8 * 8
			if b < 0x20 || b >= 0x7f {
				want = min(want, pos/8*8)
			}
			if got := asciiPrefix(string(s)); got != want {
				t.Fatalf("asciiPrefix(%q) = %d; want %d", s, got, want)
			}
			if got, want := CheckText("x", string(s), MaxIDLen), checkText("x", string(s), MaxIDLen, 0); got != want {
				t.Fatalf("CheckText(%q) = %q; want %q", s, got, want)
			}
		}
	}
}
