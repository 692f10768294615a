package main

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30s", 30 * time.Second, true},
		{"1m30s", 90 * time.Second, true},
		{"500ms", 500 * time.Millisecond, true},
		{"2h", 2 * time.Hour, true},
		{"30", 30 * time.Second, true},
		{"1.5", 1500 * time.Millisecond, true},
		{" 0 ", 0, true},
		{"0s", 0, true},
		{"-1s", 0, false},
		{"-5", 0, false},
		{"", 0, false},
		{"soon", 0, false},
		{"10 s", 0, false},
		{"1e300", 0, false},
	}
	for _, tt := range tests {
		got, err := parseDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseArgsInterspersed(t *testing.T) {
	tests := []struct {
		args     []string
		wantPos  []string
		wantJSON bool
		wantTTL  time.Duration
	}{
		{[]string{"id1"}, []string{"id1"}, false, time.Minute},
		{[]string{"id1", "--json"}, []string{"id1"}, true, time.Minute},
		{[]string{"--ttl", "5s", "a", "-json", "b"}, []string{"a", "b"}, true, 5 * time.Second},
		{[]string{"a", "--ttl=2m", "b"}, []string{"a", "b"}, false, 2 * time.Minute},
		{[]string{"a", "--", "--json", "-x"}, []string{"a", "--json", "-x"}, false, time.Minute},
		{[]string{"-", "a"}, []string{"-", "a"}, false, time.Minute},
		{nil, nil, false, time.Minute},
	}
	for _, tt := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		js := fs.Bool("json", false, "")
		ttl := durationFlag(fs, "ttl", time.Minute, "")
		pos, err := parseArgs(fs, tt.args)
		if err != nil || !slices.Equal(pos, tt.wantPos) || *js != tt.wantJSON || *ttl != tt.wantTTL {
			t.Errorf("parseArgs(%q) = %q, json=%v, ttl=%v, %v; want %q, json=%v, ttl=%v",
				tt.args, pos, *js, *ttl, err, tt.wantPos, tt.wantJSON, tt.wantTTL)
		}
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, args := range [][]string{{"--nope"}, {"a", "--ttl", "x"}, {"--ttl"}, {"--ttl=-3s"}} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		durationFlag(fs, "ttl", 0, "")
		if pos, err := parseArgs(fs, args); err == nil {
			t.Errorf("parseArgs(%q) = %q, nil; want an error", args, pos)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	own, tail, ok := splitCommand([]string{"--ttl", "5s", "a", "--", "sh", "-c", "exit 3", "--", "x"})
	if !ok || !slices.Equal(own, []string{"--ttl", "5s", "a"}) || !slices.Equal(tail, []string{"sh", "-c", "exit 3", "--", "x"}) {
		t.Errorf("splitCommand = %q, %q, %v; want the first -- to split, the rest untouched", own, tail, ok)
	}
	if own, tail, ok := splitCommand([]string{"a", "b"}); ok || tail != nil || len(own) != 2 {
		t.Errorf("splitCommand without -- = %q, %q, %v; want everything own, ok=false", own, tail, ok)
	}
}

func TestPrintFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	durationFlag(fs, "ttl", 30*time.Second, "lease lifetime")
	fs.String("agent", "", "as agent `ID`")
	fs.Bool("json", false, "print JSON")
	var b strings.Builder
	printFlags(&b, fs)
	want := "  --agent ID\n      as agent ID\n" +
		"  --json\n      print JSON\n" +
		"  --ttl duration\n      lease lifetime (default 30s)\n"
	if b.String() != want {
		t.Errorf("printFlags =\n%s\nwant\n%s", b.String(), want)
	}
}
