package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// TestInstallFromGoRunWarns is issue 19 §4 as a user meets it: klockd
// install run through `go run` would bake Go's temporary build into the
// unit's ExecStart. The dry run says so and how to build klockd where it
// stays; a real install refuses (checked after the service manager, so on
// a machine without systemd that error comes first: see
// TestServiceWithoutServiceManager).
func TestInstallFromGoRunWarns(t *testing.T) {
	cmd := exec.Command("go", "run", "./cmd/klockd", "install", "--dry-run")
	cmd.Dir = ".."
	cmd.Env = testEnv()
	r := runCmd(t, cmd)
	if r.code != 0 || !strings.Contains(r.stdout, "ExecStart=") {
		t.Fatalf("go run ./cmd/klockd install --dry-run: exit %d, stdout %q, stderr %q; want the unit", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"klockd: warning:", "go-build", "go build -o ", "./cmd/klockd"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q; want a warning containing %q", r.stderr, want)
		}
	}
}

// TestIntegrateFromGoRunWarns: klockctl integrate writes its own path into
// Claude Code's settings and git's hooks, so run through `go run` it warns
// as klockd install does (one check, cmd/internal/installable), and says
// how to build klockctl where it stays.
func TestIntegrateFromGoRunWarns(t *testing.T) {
	cmd := exec.Command("go", "run", "./cmd/klockctl", "integrate", "claude-code", "--dry-run", "--dir", t.TempDir())
	cmd.Dir = ".."
	cmd.Env = testEnv()
	r := runCmd(t, cmd)
	if r.code != 0 || !strings.Contains(r.stdout, "would be created") {
		t.Fatalf("go run ./cmd/klockctl integrate claude-code --dry-run: exit %d, stdout %q, stderr %q; want the files it would write", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"klockctl: warning:", "go-build", "go build -o ", "./cmd/klockctl"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q; want a warning containing %q", r.stderr, want)
		}
	}
}
