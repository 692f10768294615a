package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// The Python client's copies of the shared rules (issue 19): the FILE key
// rule, the socket rule and autostart, checked against the Go reference
// and, for autostart, as a new user would meet it.

// pythonEval runs a Python program with the client on its path, feeding it
// in as JSON and decoding what it prints as JSON into out.
func pythonEval(t *testing.T, program string, in, out any) {
	t.Helper()
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := pythonCommand(t, ctx, "-c", program)
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(got, out); err != nil {
		t.Fatalf("python printed %q: %v", got, err)
	}
}

// gitRun runs git in dir and fails the test if it fails.
func gitRun(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = testEnv("GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

// TestPythonFileKeyMatchesGo resolves the same FILE paths, from the same
// directories, with the Python client's klock.filekey and with
// clientlib.ResolveFile, on a real repository with linked worktrees, a
// separate clone, a bare repository's worktree and a submodule-like .git
// file: the keys must be identical.
func TestPythonFileKeyMatchesGo(t *testing.T) {
	requirePython(t, "msgpack", "python3-msgpack")
	p := gitCheckouts(t) // repo, its worktrees wt-a and wt-b, a clone
	root := filepath.Dir(p["repo"])
	repo := p["repo"]
	gitRun(t, root, "clone", "-q", "--bare", repo, filepath.Join(root, "bare.git"))
	gitRun(t, filepath.Join(root, "bare.git"), "worktree", "add", "-q", filepath.Join(root, "nested", "bare-wt"))
	sub := filepath.Join(root, "sub") // a .git file whose gitdir has no commondir, as a submodule's
	if err := os.MkdirAll(filepath.Join(sub, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, ".git"), []byte("gitdir: ../repo/.git\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	type resolveCase struct {
		Path, Dir, Mode string
	}
	var cases []resolveCase
	paths := []string{"src/auth.ts", "./src//auth.ts", "src/", "src//", "../x/../y", ".", "..", "/",
		"src/.", "a/b/../../c/", filepath.Join(root, "wt-a", "src", "auth.ts"), filepath.Join(root, "wt-a") + "/",
		filepath.Join(root, "wt-a"), "//" + filepath.Join(root, "wt-b", "deep", "new.go"),
		filepath.Join(root, "nested", "bare-wt", "f"), filepath.Join(root, "sub", "x", "y"), "/nonexistent/dir/f"}
	dirs := []string{repo, p["wt-a"], filepath.Join(p["wt-a"], "src"), p["wt-b"], p["clone"],
		filepath.Join(root, "nested", "bare-wt"), sub, "/"}
	for _, d := range dirs {
		for _, p := range paths {
			for _, mode := range []string{"shared", "separate"} {
				cases = append(cases, resolveCase{Path: p, Dir: d, Mode: mode})
			}
		}
	}
	var got []string
	pythonEval(t, `
import json, sys
from klock.filekey import file_key
print(json.dumps([file_key(c["Path"], cwd=c["Dir"], worktrees=c["Mode"]) for c in json.load(sys.stdin)]))
`, cases, &got)
	if len(got) != len(cases) {
		t.Fatalf("python resolved %d paths; want %d", len(got), len(cases))
	}
	mapped := 0
	for i, c := range cases {
		want, err := clientlib.ResolveFile(c.Path, clientlib.ResolveOptions{Dir: c.Dir, Worktrees: c.Mode})
		if err != nil {
			t.Fatalf("ResolveFile(%q, %q, %s): %v", c.Path, c.Dir, c.Mode, err)
		}
		if got[i] != want.Key {
			t.Errorf("FILE %q in %s (%s): python %q, Go %q", c.Path, c.Dir, c.Mode, got[i], want.Key)
		}
		if want.Key != want.Path {
			mapped++
		}
	}
	if mapped == 0 {
		t.Fatal("no case was mapped to a main worktree; the test checks nothing of the worktree rule")
	}
}

// TestPythonSocketRuleMatchesGo compares the Python client's user_sockets
// and user_state_dir with protocol.UserSockets and protocol.UserStateDir,
// for this user and (as root) for users with and without a /run/user
// directory of their own.
func TestPythonSocketRuleMatchesGo(t *testing.T) {
	requirePython(t, "msgpack", "python3-msgpack")
	uids := []int{os.Geteuid(), 4242001}
	if os.Geteuid() == 0 {
		// 4242002 has a runtime directory it owns; 4242003 one owned by
		// someone else; 4242004 a file in its place.
		for uid, owner := range map[int]int{4242002: 4242002, 4242003: 4242999} {
			dir := "/run/user/" + strconv.Itoa(uid)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := os.Chown(dir, owner, owner); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile("/run/user/4242004", nil, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove("/run/user/4242004") })
		uids = append(uids, 4242002, 4242003, 4242004)
	}
	var got struct {
		Sockets  [][]string `json:"sockets"`
		StateDir string     `json:"state_dir"`
	}
	pythonEval(t, `
import json, sys
from klock.socketpath import user_sockets, user_state_dir
uids = json.load(sys.stdin)
print(json.dumps({"sockets": [user_sockets(u) for u in uids], "state_dir": user_state_dir()}))
`, uids, &got)
	for i, uid := range uids {
		if want := protocol.UserSockets(uid); strings.Join(got.Sockets[i], " ") != strings.Join(want, " ") {
			t.Errorf("user sockets of uid %d: python %q, Go %q", uid, got.Sockets[i], want)
		}
	}
	if want := protocol.UserStateDir(); got.StateDir != want {
		t.Errorf("user state dir: python %q, Go %q", got.StateDir, want)
	}
}

// The seed's Complete Example, verbatim (shared/seed/python-sdk.md).
const seedCompleteExample = `from klock import KlockClient

klock = KlockClient()

# Register two agents
klock.register_agent("agent-senior", 100)  # Older = higher priority
klock.register_agent("agent-junior", 200)  # Younger = lower priority

# Senior acquires a lease on auth.ts
senior_result = klock.acquire_lease(
    "agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", 60000
)
print(f"Senior: {senior_result}")
# {'success': True, 'lease_id': '...', 'agent_id': 'agent-senior', ...}

# Junior tries the same file → DIE
junior_result = klock.acquire_lease(
    "agent-junior", "s2", "FILE", "/src/auth.ts", "MUTATES", 60000
)
print(f"Junior: {junior_result}")
# {'success': False, 'reason': 'DIE', 'wait_time': 1000}

# Junior can work on a different file → OK
junior_other = klock.acquire_lease(
    "agent-junior", "s2", "FILE", "/src/utils.ts", "MUTATES", 60000
)
print(f"Junior (other file): {junior_other}")
# {'success': True, 'lease_id': '...', ...}

# Cleanup
klock.release_lease(senior_result["lease_id"])
klock.release_lease(junior_other["lease_id"])
print(f"Active leases: {klock.active_lease_count()}")  # 0
`

// pythonShell runs Python programs as a fresh non-root user (see
// newUserShell), with a copy of the client it can read.
type pythonShell struct {
	*userShell
	lib string // holds the klock package
}

func newPythonShell(t *testing.T, name string, programs ...string) *pythonShell {
	t.Helper()
	requirePython(t, "msgpack", "python3-msgpack")
	sh := newUserShell(t, name, programs...)
	lib := filepath.Join(filepath.Dir(sh.bin), "lib")
	src, err := filepath.Abs(filepath.Join("..", "clientlib", "python", "klock"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-r", src, lib+"/").CombinedOutput(); err != nil {
		t.Fatalf("copying the client: %v\n%s", err, out)
	}
	if out, err := exec.Command("chmod", "-R", "a+rX", lib).CombinedOutput(); err != nil {
		t.Fatalf("chmod: %v\n%s", err, out)
	}
	return &pythonShell{userShell: sh, lib: lib}
}

// command runs python3 -c program as the user in its home.
func (sh *pythonShell) python(env []string, program string) *exec.Cmd {
	cmd := exec.Command(pythonBin, "-c", program)
	cmd.Env = append([]string{"PATH=" + sh.bin + ":/usr/bin:/bin", "HOME=" + sh.home, "USER=" + sh.u.name,
		"PYTHONPATH=" + sh.lib, "PYTHONDONTWRITEBYTECODE=1"}, env...)
	cmd.Dir = sh.home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: sh.u.uid, Gid: sh.u.gid}}
	return cmd
}

// TestPythonAutostartSeedExample runs the seed's Complete Example verbatim
// as a user with klockd on PATH and no daemon running, twice: the first run
// starts one daemon and says so in one stderr line, the second uses it.
func TestPythonAutostartSeedExample(t *testing.T) {
	sh := newPythonShell(t, "klocktest-py1", "klockd", "klockctl")
	socket := "/tmp/klock-" + strconv.Itoa(int(sh.u.uid)) + "/klockd.sock"
	for run := 1; run <= 2; run++ {
		r := runCmd(t, sh.python(nil, seedCompleteExample))
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		want := []string{"Senior: {'success': True, 'lease_id': '", "Junior: {'success': False, 'reason': 'DIE',",
			"Junior (other file): {'success': True, 'lease_id': '", "Active leases: 0"}
		ok := r.code == 0 && len(lines) == len(want)
		for i := 0; ok && i < len(want); i++ {
			ok = strings.HasPrefix(lines[i], want[i])
		}
		if !ok {
			t.Fatalf("run %d of the seed example: exit %d\nstdout:\n%s\nstderr:\n%s", run, r.code, r.stdout, r.stderr)
		}
		if n := startedLines(r.stderr); n != 2-run || (n == 1 && (!strings.Contains(r.stderr, socket) ||
			strings.Count(r.stderr, "\n") != 1)) {
			t.Errorf("run %d: stderr %q; want %d line(s) saying klockd was started on %s", run, r.stderr, 2-run, socket)
		}
	}
	if pids := daemonsOf(sh.u.uid); len(pids) != 1 {
		t.Fatalf("klockd processes of the user after two runs: %v; want exactly one", pids)
	}
	if _, err := os.Stat(filepath.Join(sh.home, ".local/state/klock/klockd.log")); err != nil {
		t.Errorf("the autostarted klockd's log: %v", err)
	}
	if s, kind, _, _ := sh.status(t); s != socket || kind != "per-user" {
		t.Errorf("klockctl status after the Python runs: %s (%s); want %s (per-user)", s, kind, socket)
	}
}

// TestPythonAutostartConcurrentFirstUse starts several Python clients at
// once with no daemon running (the sync and the asyncio client): they end
// with one daemon, started by one of them.
func TestPythonAutostartConcurrentFirstUse(t *testing.T) {
	sh := newPythonShell(t, "klocktest-py2", "klockd")
	programs := []string{
		"import klock; print(klock.KlockClient().active_lease_count())",
		"import asyncio, klock.asyncio as ka\nasync def m():\n    print(await ka.KlockClient().active_lease_count())\nasyncio.run(m())",
	}
	cmds := make([]*exec.Cmd, 4)
	for i := range cmds {
		cmds[i] = sh.python(nil, programs[i%len(programs)])
	}
	checkOneDaemonStarted(t, sh.u.uid, cmds)
}

// TestPythonAutostartOptOut: KLOCK_NO_AUTOSTART, KLOCK_DISABLE_AUTOSTART and
// a named socket (KLOCK_SOCKET, or the constructor's argument) never start
// klockd; without klockd to start, the error says where to get it.
func TestPythonAutostartOptOut(t *testing.T) {
	sh := newPythonShell(t, "klocktest-py3", "klockd")
	const use = "import klock\ntry:\n    klock.KlockClient(%s)\nexcept klock.DaemonNotRunningError as e:\n    print(e)\n"
	for _, tc := range []struct {
		env  []string
		arg  string
		want string
	}{
		{[]string{"KLOCK_NO_AUTOSTART=1"}, "", "autostart is off"},
		{[]string{"KLOCK_DISABLE_AUTOSTART=yes"}, "", "autostart is off"},
		{[]string{"KLOCK_SOCKET=" + sh.home + "/none.sock"}, "", sh.home + "/none.sock"},
		{nil, strconv.Quote(sh.home + "/arg.sock"), sh.home + "/arg.sock"},
	} {
		r := runCmd(t, sh.python(tc.env, strings.Replace(use, "%s", tc.arg, 1)))
		if r.code != 0 || !strings.Contains(r.stdout, tc.want) || startedLines(r.stderr) != 0 {
			t.Errorf("KlockClient(%s) with %q: exit %d, stdout %q, stderr %q; want DaemonNotRunningError saying %q",
				tc.arg, tc.env, r.code, r.stdout, r.stderr, tc.want)
		}
		if pids := daemonsOf(sh.u.uid); len(pids) != 0 {
			t.Fatalf("with %q a klockd was started: %v", tc.env, pids)
		}
	}
	bare := newPythonShell(t, "klocktest-py3") // no klockd on PATH
	r := runCmd(t, bare.python(nil, strings.Replace(use, "%s", "", 1)))
	if !strings.Contains(r.stdout, "go install github.com/klockd/klock/cmd/klockd@latest") {
		t.Errorf("KlockClient() without klockd: exit %d, stdout %q, stderr %q; want where to get klockd",
			r.code, r.stdout, r.stderr)
	}
}

// TestPythonRelativePathMeetsKlockctl takes a relative FILE path from the
// Python client and then the same relative path with klockctl, in one
// directory: both name one key, so the second (a junior) is refused.
func TestPythonRelativePathMeetsKlockctl(t *testing.T) {
	requirePython(t, "msgpack", "python3-msgpack")
	d := harness.Start(t, harness.Options{StateDir: "none"})
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var grant struct {
		Success  bool   `json:"success"`
		Resource string `json:"resource"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := pythonCommand(t, ctx, "-c", `
import json, sys, klock
k = klock.KlockClient(sys.argv[1])
k.register_agent("py-agent", 1)
# bind=None: the lease must outlive this short script
print(json.dumps(k.acquire_lease("py-agent", "s", "FILE", "src/./x.ts", "MUTATES", 60000, bind=None)))
`, d.Socket)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	if err := json.Unmarshal(out, &grant); err != nil || !grant.Success {
		t.Fatalf("python acquire of a relative path: %s (%v)", out, err)
	}
	if want := "FILE:" + dir + "/src/x.ts"; grant.Resource != want {
		t.Errorf("python keyed src/./x.ts in %s as %q; want %q", dir, grant.Resource, want)
	}
	r := kcIn(t, d, dir, "acquire", "--agent", "ctl-agent", "src/x.ts")
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, "py-agent") {
		t.Errorf("klockctl acquire src/x.ts in %s: exit %d, %q %q; want refused, held by py-agent",
			dir, r.code, r.stdout, r.stderr)
	}
}
