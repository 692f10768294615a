package tracefile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestStartWritesATrace checks that a trace is written and closed, and
// that an unwritable path is an error.
func TestStartWritesATrace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.trace")
	stop, err := Start(path)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every runtime trace starts with this header.
	if len(b) < 16 || string(b[:11]) != "go 1.26 tra" {
		t.Errorf("trace starts %q; want a runtime trace header", b[:min(16, len(b))])
	}
	if _, err := Start(filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Error("Start into a missing directory succeeded")
	}
}
