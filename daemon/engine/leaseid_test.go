package engine

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

// TestParseLeaseKey checks that the ids the engine hands out parse back to
// their bytes and that any other text names no lease: every byte of a
// canonical id is replaced in turn by characters that are not lower-case hex
// (or not a dash, at a dash's place).
func TestParseLeaseKey(t *testing.T) {
	e := New(Config{})
	for range 100 {
		k, text := e.newLeaseID()
		got, ok := parseLeaseKey(text)
		if !ok || got != k {
			t.Fatalf("parseLeaseKey(%q) = %x, %v; want %x", text, got, ok, k)
		}
		if u, err := uuid.Parse(text); err != nil || leaseKey(u) != k {
			t.Fatalf("%q is not the canonical text of its bytes: %v", text, err)
		}
		for i := range text {
			for _, c := range []byte{'A', 'F', 'g', 'G', 'z', '-', '0', ' ', 0, 0xff} {
				bad := []byte(text)
				if bad[i] == c || (text[i] != '-' && strings.IndexByte("0123456789abcdef", c) >= 0) {
					continue // still a valid id
				}
				bad[i] = c
				if _, ok := parseLeaseKey(string(bad)); ok {
					t.Fatalf("parseLeaseKey(%q) accepted a byte %q at %d", bad, c, i)
				}
			}
		}
		for _, s := range []string{"", text[:35], text + "0", strings.ReplaceAll(text, "-", "")} {
			if _, ok := parseLeaseKey(s); ok {
				t.Fatalf("parseLeaseKey(%q) accepted a text of length %d", s, len(s))
			}
		}
	}
}
