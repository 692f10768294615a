package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/tests/harness"
)

// pythonBin is the interpreter the Python client is tested with: Debian's,
// where `apt-get install -y python3-msgpack` puts msgpack.
const pythonBin = "/usr/bin/python3"

// TestPythonClient runs the Python client's unittest suite
// (clientlib/python/tests) against a freshly built klockd. Without Python or
// msgpack it skips, unless KLOCK_REQUIRE_PYTHON=1 (set by CI) makes that a
// failure.
func TestPythonClient(t *testing.T) {
	if out, err := exec.Command(pythonBin, "-c", "import msgpack").CombinedOutput(); err != nil {
		msg := "klock: the Python client tests need " + pythonBin + " with msgpack" +
			" (apt-get install -y python3-msgpack): " + strings.TrimSpace(string(out)) + " " + err.Error()
		if os.Getenv("KLOCK_REQUIRE_PYTHON") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	klockd := harness.Klockd(t)

	deadline := time.Now().Add(10 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-10*time.Second).Before(deadline) {
		deadline = d.Add(-10 * time.Second) // leave time to report the output
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, pythonBin, "-m", "unittest", "discover",
		"-s", filepath.Join("clientlib", "python", "tests"), "-v")
	cmd.Dir = root
	cmd.Env = append(os.Environ(),
		"KLOCKD_BIN="+klockd,
		"PYTHONPATH="+filepath.Join(root, "clientlib", "python"),
		"PYTHONDONTWRITEBYTECODE=1",
		"KLOCK_SOCKET=", // the suite passes explicit sockets; never touch a real daemon
	)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err = cmd.Run()
	if err != nil {
		t.Fatalf("python unittest failed: %v\n%s", err, out.String())
	}
	// With KLOCKD_BIN set the end-to-end half of the suite must not skip
	// for want of a daemon (other skips, e.g. tests that need root, may).
	for _, m := range regexp.MustCompile(`skipped '([^']*)'`).FindAllStringSubmatch(out.String(), -1) {
		if strings.Contains(m[1], "KLOCKD_BIN") {
			t.Fatalf("python unittest skipped end-to-end tests although KLOCKD_BIN is set:\n%s", out.String())
		}
		t.Logf("skipped: %s", m[1])
	}
	if m := regexp.MustCompile(`Ran \d+ tests? in [0-9.]+s`).FindString(out.String()); m != "" {
		t.Log(m)
	}
	if testing.Verbose() {
		t.Log(out.String())
	}
}
