package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testApp returns an app writing to buffers, with a fixed environment.
func testApp(env map[string]string) (*app, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	a := &app{
		stdin:  strings.NewReader(""),
		stdout: &out,
		stderr: &errb,
		getenv: func(k string) string { return env[k] },
		getwd:  func() (string, error) { return "/work", nil },
		now:    func() time.Time { return testNow },
		loc:    time.UTC,
	}
	return a, &out, &errb
}

func TestUsageErrorsExit2(t *testing.T) {
	tests := [][]string{
		{},
		{"frobnicate"},
		{"--nope", "status"},
		{"status", "extra"},
		{"status", "--nope"},
		{"leases", "--limit", "-1"},
		{"leases", "--limit", "x"},
		{"release"},
		{"release", "a", "b"},
		{"heartbeat"},
		{"heartbeat", "--ttl", "soon", "id"},
		{"end-session", "agent"},
		{"acquire"},
		{"acquire", "--predicate", "READS", "/a"},
		{"acquire", "--ttl", "0", "/a"},
		{"acquire", "SYMBL:x"},
		{"acquire", "/a", "/a"},
		{"agents", "register"},
		{"agents", "register", "--priority", "-3", "x"},
		{"agents", "unregister"},
		{"agents", "promote", "x"},
		{"agents", "--priority", "3"},
		{"revoke"},
		{"freeze"},
		{"thaw", "a", "b"},
		{"run", "/a"},
		{"run", "/a", "--"},
		{"run", "--", "true"},
		{"version", "x"},
		{"help", "nope"},
	}
	for _, args := range tests {
		a, _, errb := testApp(nil)
		if code := a.main(args); code != exitUsage {
			t.Errorf("klockctl %q exited %d; want %d (stderr %q)", args, code, exitUsage, errb)
		}
		if len(args) > 0 {
			line := errb.String()
			if !strings.HasPrefix(line, "klockctl: ") || strings.Count(line, "\n") != 1 {
				t.Errorf("klockctl %q stderr = %q; want one line starting \"klockctl: \"", args, line)
			}
		}
	}
}

// TestHelpDocumentsEveryFlag runs every command with --help and checks the
// usage is on stdout, exit 0, and lists every flag the command accepts.
func TestHelpDocumentsEveryFlag(t *testing.T) {
	for name, c := range commands() {
		for _, args := range [][]string{{name, "--help"}, {name, "-h"}, {"help", name}} {
			a, out, errb := testApp(nil)
			if code := a.main(args); code != exitOK {
				t.Errorf("klockctl %q exited %d; want 0 (stderr %q)", args, code, errb)
			}
			help := out.String()
			if !strings.HasPrefix(help, "usage: klockctl "+name) {
				t.Errorf("klockctl %q printed %q; want it to start with the usage line", args, help)
			}
			a.flagSet(c).VisitAll(func(f *flag.Flag) {
				if !strings.Contains(help, "-"+f.Name+"\n") && !strings.Contains(help, "-"+f.Name+" ") {
					t.Errorf("klockctl %s --help does not document --%s", name, f.Name)
				}
				if f.Usage == "" {
					t.Errorf("klockctl %s: flag --%s has no usage text", name, f.Name)
				}
			})
		}
	}
}

func TestTopHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		a, out, _ := testApp(nil)
		if code := a.main(args); code != exitOK {
			t.Errorf("klockctl %q exited %d; want 0", args, code)
		}
		for name := range commands() {
			if !strings.Contains(out.String(), "  "+name+" ") {
				t.Errorf("klockctl %q does not list command %s", args, name)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	a, out, _ := testApp(nil)
	if code := a.main([]string{"version"}); code != 0 || !strings.HasPrefix(out.String(), "klockctl ") {
		t.Errorf("klockctl version = %d, %q", code, out)
	}
	a, out, _ = testApp(nil)
	if code := a.main([]string{"--json", "version"}); code != 0 {
		t.Fatalf("klockctl --json version exited %d", code)
	}
	var v versionJSON
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v.Version == "" || v.Protocol != 1 {
		t.Errorf("klockctl --json version = %q (%v); want version and protocol 1", out, err)
	}
}

func TestUnreachableExit3NamesSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	for _, args := range [][]string{
		{"status", "--socket", sock},
		{"--socket", sock, "leases"},
		{"count", "--socket", sock, "--json"},
		{"acquire", "--socket", sock, "/a"},
		{"run", "--socket", sock, "/a", "--", "true"},
	} {
		a, out, errb := testApp(nil)
		if code := a.main(args); code != exitUnreachable {
			t.Errorf("klockctl %q exited %d; want %d (stderr %q)", args, code, exitUnreachable, errb)
		}
		line := errb.String()
		if !strings.Contains(line, sock) || !strings.Contains(line, "klockd") || strings.Count(line, "\n") != 1 {
			t.Errorf("klockctl %q stderr = %q; want one line naming %s and how to start klockd", args, line, sock)
		}
		if out.Len() != 0 {
			t.Errorf("klockctl %q stdout = %q; want nothing", args, out)
		}
	}
}

func TestSocketResolution(t *testing.T) {
	a, _, _ := testApp(map[string]string{"KLOCK_SOCKET": "/env.sock"})
	if got := a.socketPath(); got != "/env.sock" {
		t.Errorf("socketPath with KLOCK_SOCKET = %q; want /env.sock", got)
	}
	a.socket = "/flag.sock"
	if got := a.socketPath(); got != "/flag.sock" {
		t.Errorf("socketPath with --socket and KLOCK_SOCKET = %q; want the flag, /flag.sock", got)
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errHelpShown, 0},
		{usagef("x", "bad"), 2},
		{&exitStatus{code: 137}, 137},
		{errors.New("boom"), 1},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d; want %d", tt.err, got, tt.want)
		}
	}
}

func TestUnreachableText(t *testing.T) {
	tests := []struct {
		cause error
		want  []string
	}{
		{syscall.ENOENT, []string{"/s.sock", "no such file or directory", "klockd", "--socket"}},
		{syscall.ECONNREFUSED, []string{"/s.sock", "connection refused", "start it with"}},
		{&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)},
			[]string{"permission denied", "/s.sock", "group"}},
		{nil, []string{"/s.sock", "no answer"}},
	}
	for _, tt := range tests {
		got := unreachableText("/s.sock", tt.cause)
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("unreachableText(%v) = %q; want it to contain %q", tt.cause, got, w)
			}
		}
		if strings.Contains(got, "\n") {
			t.Errorf("unreachableText(%v) = %q; want one line", tt.cause, got)
		}
	}
}
