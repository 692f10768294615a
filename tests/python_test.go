package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
	requirePython(t, "msgpack", "python3-msgpack")
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

// requirePython skips the test (fails it under KLOCK_REQUIRE_PYTHON=1)
// unless pythonBin can import module, which the Debian package pkg provides.
func requirePython(t *testing.T, module, pkg string) {
	t.Helper()
	if out, err := exec.Command(pythonBin, "-c", "import "+module).CombinedOutput(); err != nil {
		msg := "klock: this test needs " + pythonBin + " with " + module +
			" (apt-get install -y " + pkg + "): " + strings.TrimSpace(string(out)) + " " + err.Error()
		if os.Getenv("KLOCK_REQUIRE_PYTHON") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// pythonCommand runs pythonBin with args in clientlib/python, with the
// package on the path and no default socket to touch.
func pythonCommand(t *testing.T, ctx context.Context, args ...string) *exec.Cmd {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "clientlib", "python"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, pythonBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PYTHONPATH="+dir, "PYTHONDONTWRITEBYTECODE=1", "KLOCK_SOCKET=")
	return cmd
}

// TestPythonTypes type-checks the Python client with mypy --strict (the
// settings are in clientlib/python/pyproject.toml).
func TestPythonTypes(t *testing.T) {
	requirePython(t, "msgpack", "python3-msgpack")
	requirePython(t, "mypy", "python3-mypy")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := pythonCommand(t, ctx, "-m", "mypy", "--strict", "--cache-dir", t.TempDir(),
		"klock", "bench/bench.py").CombinedOutput()
	if err != nil {
		t.Fatalf("mypy --strict klock: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
}

// pyBenchCell is the part of a cell of clientlib/python/bench/bench.py's
// JSON that this test checks.
type pyBenchCell struct {
	Backend     string  `json:"backend"`
	Threads     int     `json:"threads"`
	Pairs       float64 `json:"pairs"`
	PairsPerSec float64 `json:"pairs_per_sec"`
	P50PairUs   float64 `json:"p50_pair_us"`
	P50CallUs   float64 `json:"p50_call_us"`
}

// TestPythonBenchShort runs the Python client's benchmark in its short mode
// against redis-py, so that it cannot rot. It checks that every cell ran
// and that the table is written; it never asserts a timing.
func TestPythonBenchShort(t *testing.T) {
	requirePython(t, "msgpack", "python3-msgpack")
	requirePython(t, "redis", "python3-redis")
	redis := "redis-server"
	if _, err := exec.LookPath(redis); err != nil {
		redis = "/usr/bin/redis-server"
		if _, err := os.Stat(redis); err != nil {
			if os.Getenv("KLOCK_REQUIRE_PYTHON") == "1" {
				t.Fatal("redis-server not installed (apt-get install -y redis-server)")
			}
			t.Skip("redis-server not installed (apt-get install -y redis-server)")
		}
	}
	klockd := harness.Klockd(t)
	dir := t.TempDir()
	jsonOut, mdOut := filepath.Join(dir, "bench.json"), filepath.Join(dir, "bench.md")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := pythonCommand(t, ctx, "bench/bench.py", "--short", "--klockd", klockd,
		"--redis-server", redis, "--json", jsonOut, "--md", mdOut).CombinedOutput()
	if err != nil {
		t.Fatalf("bench.py --short: %v\n%s", err, out)
	}
	var res struct {
		Cells   []pyBenchCell `json:"cells"`
		Summary []pyBenchCell `json:"summary"`
	}
	data, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("bench.py JSON: %v\n%s", err, data)
	}
	seen := map[string]bool{}
	for _, c := range res.Summary {
		seen[fmt.Sprintf("%s/%d", c.Backend, c.Threads)] = true
		if c.Pairs <= 0 || c.PairsPerSec <= 0 || c.P50PairUs <= 0 || c.P50CallUs <= 0 {
			t.Errorf("cell %s W=%d did no work: %+v", c.Backend, c.Threads, c)
		}
	}
	for _, want := range []string{"klock/1", "klock/8", "redis-py/1", "redis-py/8"} {
		if !seen[want] {
			t.Errorf("no summary row for %s in %s", want, data)
		}
	}
	md, err := os.ReadFile(mdOut)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| 1 | klock |") || !strings.Contains(string(md), "redis-py") {
		t.Errorf("bench.py -md table lacks its rows:\n%s", md)
	}
	t.Logf("%s", md)
}

// TestPythonInstallOnDebian follows the README's install recipe for Debian
// (PEP 668 refuses pip into the system Python): a venv that sees Debian's
// packages, and pip with --no-build-isolation and --no-index, so nothing is
// downloaded. The package must then import from the venv's own Python.
func TestPythonInstallOnDebian(t *testing.T) {
	requirePython(t, "msgpack", "python3-msgpack")
	requirePython(t, "ensurepip", "python3-venv")
	requirePython(t, "pip", "python3-pip")
	requirePython(t, "wheel", "python3-wheel")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	// pip builds in the source tree: build a copy, not the checkout.
	if out, err := exec.Command("cp", "-r", filepath.Join("..", "clientlib", "python"), src).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	venv := filepath.Join(dir, "venv")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{pythonBin, "-m", "venv", "--system-site-packages", venv},
		{filepath.Join(venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index", src},
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "PIP_NO_CACHE_DIR=1", "PYTHONPATH=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	cmd := exec.CommandContext(ctx, filepath.Join(venv, "bin", "python"), "-c",
		"import klock, klock.asyncio; print(klock.__version__, klock.__file__)")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PYTHONPATH=")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), filepath.Join(venv, "lib")) {
		t.Fatalf("import klock from the venv: %v\n%s", err, out)
	}
	t.Logf("installed: %s", strings.TrimSpace(string(out)))
}
