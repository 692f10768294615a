package main

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
)

// TestHelpDocumentsEveryFlag: --help exits 0 and names every flag and the
// KLOCK_* rule.
func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("klockd --help exit %d: %s", code, errOut.String())
	}
	help := out.String()
	var o options
	newFlags(io.Discard, &o).VisitAll(func(f *flag.Flag) {
		if !strings.Contains(help, "-"+f.Name) {
			t.Errorf("--help does not mention -%s", f.Name)
		}
	})
	if !strings.Contains(help, "KLOCK_") {
		t.Errorf("--help does not explain KLOCK_* variables")
	}
}

// TestEnvironmentSetsFlags: KLOCK_<NAME> sets a flag; the command line
// wins over it; a bad value is a usage error naming the variable.
func TestEnvironmentSetsFlags(t *testing.T) {
	t.Setenv("KLOCK_STATE_DIR", "/from/env")
	t.Setenv("KLOCK_MAX_CONNS", "17")
	t.Setenv("KLOCK_SOCKET", "/env.sock")
	var o options
	fs := newFlags(io.Discard, &o)
	if code, done := parseFlags(fs, []string{"--socket", "/flag.sock"}, io.Discard); done {
		t.Fatalf("parseFlags stopped with %d", code)
	}
	if o.stateDir != "/from/env" || o.maxConns != 17 || o.socket != "/flag.sock" {
		t.Errorf("options = state %q conns %d socket %q; want /from/env, 17, /flag.sock", o.stateDir, o.maxConns, o.socket)
	}

	t.Setenv("KLOCK_MAX_CONNS", "many")
	var errOut bytes.Buffer
	fs = newFlags(&errOut, &options{})
	if code, done := parseFlags(fs, nil, io.Discard); !done || code != 2 || !strings.Contains(errOut.String(), "KLOCK_MAX_CONNS") {
		t.Errorf("bad KLOCK_MAX_CONNS: code %d done %v, stderr %q; want usage error naming it", code, done, errOut.String())
	}
}

func TestUnknownCommandIsUsageError(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"fly"}, &out, &errOut); code != 2 {
		t.Errorf("klockd fly exit %d; want 2", code)
	}
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "klockd ") {
		t.Errorf("klockd version exit %d, output %q", code, out.String())
	}
}

func TestBadOptionValues(t *testing.T) {
	for _, args := range [][]string{
		{"--socket-mode", "rw"},
		{"--log-format", "xml"},
		{"--log-level", "loud"},
		{"--fsync", "sometimes"},
		{"--recover", "maybe"},
		{"--max-conns", "-1"},
	} {
		var out, errOut bytes.Buffer
		if code := run(append([]string{"run"}, args...), &out, &errOut); code != 2 {
			t.Errorf("klockd run %v: exit %d (%s); want 2", args, code, errOut.String())
		}
	}
}

// TestMaxPidfdsDefaultsToMaxAgents: without --max-pidfds the pidfd limit
// follows --max-agents; given (0 included), it is its own.
func TestMaxPidfdsDefaultsToMaxAgents(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want int
	}{
		{nil, 10_000},
		{[]string{"--max-agents", "50"}, 50},
		{[]string{"--max-agents", "50", "--max-pidfds", "7"}, 7},
		{[]string{"--max-pidfds", "0"}, 0},
	} {
		var o options
		fs := newFlags(io.Discard, &o)
		if code, done := parseFlags(fs, tt.args, io.Discard); done {
			t.Fatalf("parseFlags(%q) stopped with %d", tt.args, code)
		}
		cfg, err := o.config(io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.MaxPidfds != tt.want {
			t.Errorf("flags %q: MaxPidfds = %d; want %d", tt.args, cfg.MaxPidfds, tt.want)
		}
	}
	var errOut bytes.Buffer
	if code, done := parseFlags(newFlags(&errOut, &options{}), []string{"--max-pidfds", "x"}, io.Discard); !done || code != 2 {
		t.Errorf("--max-pidfds x: code %d done %v; want a usage error (stderr %q)", code, done, errOut.String())
	}
}
