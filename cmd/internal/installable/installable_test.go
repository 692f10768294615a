package installable

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	t.Setenv("TMPDIR", "/scratch")
	t.Setenv("GOCACHE", "/home/u/.cache/go-build")
	for _, tc := range []struct {
		exe, dir string // dir "" = lasting
	}{
		{"/usr/local/bin/klockd", ""},
		{"/home/u/.local/bin/klockd", ""},
		{"/home/u/go/bin/klockctl", ""},
		{"/tmp/go-build3141/b001/exe/klockd", "/tmp/go-build3141"},
		{"/scratch/go-build99/b001/exe/klockd", "/scratch/go-build99"},
		{"/home/u/.cache/go-build/ab/klockd", "/home/u/.cache/go-build"},
		{"/tmp/klock-bin/klockd", "/tmp"},
		{"/var/tmp/x/klockctl", "/var/tmp"},
		{"/dev/shm/klockd", "/dev/shm"},
		{"/scratch/klockd", "/scratch"},
		{"/tmpfoo/klockd", ""},
	} {
		err := Check(tc.exe)
		var te *TransientError
		switch {
		case tc.dir == "" && err != nil:
			t.Errorf("Check(%s) = %v; want nil (a lasting path)", tc.exe, err)
		case tc.dir != "" && (!errors.As(err, &te) || te.Dir != tc.dir):
			t.Errorf("Check(%s) = %v; want a *TransientError in %s", tc.exe, err, tc.dir)
		}
	}
}

func TestAdvice(t *testing.T) {
	if a := Advice("klockd"); !strings.Contains(a, "go build -o ") || !strings.Contains(a, "./cmd/klockd") {
		t.Errorf("Advice(klockd) = %q; want the go build command", a)
	}
}
