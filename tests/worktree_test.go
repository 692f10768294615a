package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// gitCheckouts makes, with the real git, a repository "repo" with one
// commit (src/auth.ts), two linked worktrees of it ("wt-a", "wt-b") and a
// separate clone ("clone"), and returns their paths by name.
func gitCheckouts(t *testing.T) map[string]string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("git is not installed; CI must have it (.ci/run installs it with apt-get)")
		}
		t.Skip("git is not installed (apt-get install -y git); skipped outside CI")
	}
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := map[string]string{}
	for _, n := range []string{"repo", "wt-a", "wt-b", "clone"} {
		p[n] = filepath.Join(root, n)
	}
	if err := os.MkdirAll(filepath.Join(p["repo"], "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p["repo"], "src", "auth.ts"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = testEnv("GIT_CONFIG_NOSYSTEM=1", "HOME="+root,
			"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run(p["repo"], "init", "-q", "-b", "main")
	run(p["repo"], "add", ".")
	run(p["repo"], "commit", "-q", "-m", "init")
	run(p["repo"], "worktree", "add", "-q", "-b", "a", p["wt-a"])
	run(p["repo"], "worktree", "add", "-q", "-b", "b", p["wt-b"])
	run(root, "clone", "-q", p["repo"], p["clone"])
	return p
}

// kcIn runs klockctl against d in directory dir.
func kcIn(t *testing.T, d *harness.Daemon, dir string, args ...string) cmdResult {
	t.Helper()
	cmd := kcCommand(t, d, nil, args...)
	cmd.Dir = dir
	return runCmd(t, cmd)
}

// TestWorktreesShareKeys is issue 19's worktree test with the real git and
// the real binaries: agents in two worktrees of one repository are refused
// each other's file, whichever client and however they name it, while a
// separate clone's copy of the file is another key.
func TestWorktreesShareKeys(t *testing.T) {
	p := gitCheckouts(t)
	d, c, ctx := startClient(t, map[string]int64{"senior": 100, "junior": 200})

	r := kcIn(t, d, p["wt-a"], "acquire", "--agent", "senior", "--json", "src/auth.ts")
	if r.code != 0 {
		t.Fatalf("senior's acquire in wt-a exited %d: %s", r.code, r.stderr)
	}
	key := "FILE:" + p["repo"] + "/src/auth.ts"
	if !strings.Contains(r.stdout, `"resource": "`+key+`"`) {
		t.Fatalf("senior's lease in wt-a = %s; want it keyed %s (the main worktree's path)", r.stdout, key)
	}

	// klockctl in the other worktree, by a relative path with a detour.
	r = kcIn(t, d, filepath.Join(p["wt-b"], "src"), "acquire", "--agent", "junior", "./../src/auth.ts")
	if r.code != 1 || !strings.Contains(r.stderr, "DIE") || !strings.Contains(r.stderr, "held by senior, as "+p["wt-a"]+"/src/auth.ts") {
		t.Fatalf("junior's acquire in wt-b = exit %d, stderr %q; want exit 1, DIE held by senior as %s/src/auth.ts", r.code, r.stderr, p["wt-a"])
	}

	// The Go client, in the main checkout, by a relative path.
	t.Chdir(p["repo"])
	res, err := c.AcquireLease(ctx, "junior", "s", "FILE", "src/auth.ts", "MUTATES", time.Minute)
	if err != nil || res.Success || res.HeldBy != "senior" || res.HeldPath != p["wt-a"]+"/src/auth.ts" {
		t.Fatalf("clientlib AcquireLease(src/auth.ts) in the main checkout = %+v, %v; want DIE held by senior, as %s/src/auth.ts",
			res, err, p["wt-a"])
	}

	// A separate clone is another repository: its file is another key.
	r = kcIn(t, d, p["clone"], "acquire", "--agent", "junior", "--json", "src/auth.ts")
	if r.code != 0 || !strings.Contains(r.stdout, p["clone"]+"/src/auth.ts") {
		t.Fatalf("junior's acquire in the clone = exit %d, %s %s; want a grant on the clone's own path", r.code, r.stdout, r.stderr)
	}

	// Listing by a path prefix from a worktree finds the lease by its key.
	cmd := kcCommand(t, d, nil, "leases", "--json", "--prefix", "src/")
	cmd.Dir = p["wt-b"]
	if r := runCmd(t, cmd); r.code != 0 || !strings.Contains(r.stdout, key) || !strings.Contains(r.stdout, `"client_path": "`+p["wt-a"]+`/src/auth.ts"`) {
		t.Fatalf("leases --prefix src/ in wt-b = exit %d, %s %s; want the lease on %s with the path senior used", r.code, r.stdout, r.stderr, key)
	}
	if r := kcIn(t, d, p["wt-b"], "leases"); !strings.Contains(r.stdout, key+" (as "+p["wt-a"]+"/src/auth.ts)") {
		t.Errorf("leases table = %s; want the key followed by (as %s/src/auth.ts)", r.stdout, p["wt-a"])
	}

	// klockctl resolve says the same without a daemon.
	if r := kcIn(t, nil, p["wt-a"], "resolve", "--json", "src/auth.ts"); r.code != 0 ||
		!strings.Contains(r.stdout, `"key": "`+key+`"`) || !strings.Contains(r.stdout, `"client_path": "`+p["wt-a"]+`/src/auth.ts"`) {
		t.Errorf("klockctl resolve in wt-a = exit %d, %s %s; want key %s and the path as named", r.code, r.stdout, r.stderr, key)
	}

	// KLOCK_WORKTREES=separate: wt-b's file is its own key again.
	cmd = kcCommand(t, d, []string{"KLOCK_WORKTREES=separate"}, "acquire", "--agent", "junior", "--json", "src/auth.ts")
	cmd.Dir = p["wt-b"]
	if r := runCmd(t, cmd); r.code != 0 || !strings.Contains(r.stdout, p["wt-b"]+"/src/auth.ts") {
		t.Fatalf("with KLOCK_WORKTREES=separate, junior's acquire in wt-b = exit %d, %s %s; want a grant on wt-b's own path",
			r.code, r.stdout, r.stderr)
	}
}

// TestClientPathOverTheWire: the path a holder named (client_path) is kept
// with its lease, shown by list_leases and in the denials it decides,
// checked like resource_path, and survives kill -9 and a restart.
func TestClientPathOverTheWire(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	r := d.Raw(t)
	for i, a := range []struct {
		id  string
		pri int
	}{{"wt-a", 100}, {"wt-b", 200}} {
		mustOK(t, "register", r.Call(uint64(1+i), protocol.OpRegisterAgent, args(protocol.ArgAgentID, a.id, protocol.ArgPriority, a.pri)), nil)
	}
	held := acquireArgs("wt-a", "s", "/repo/src/x.go", "MUTATES", 600000)
	held.ClientPath = "/repo-wt-a/src/x.go"
	held.Set(protocol.ArgClientPath)
	mustOK(t, "acquire with client_path", r.Call(3, protocol.OpAcquire, held), nil)

	want := func(when string) {
		t.Helper()
		var list protocol.ListLeasesResult
		mustOK(t, "list_leases", r.Call(10, protocol.OpListLeases, nil), &list)
		if len(list.Leases) != 1 || list.Leases[0].ClientPath != "/repo-wt-a/src/x.go" {
			t.Fatalf("%s: list_leases = %+v; want the lease with client_path /repo-wt-a/src/x.go", when, list.Leases)
		}
		var den protocol.AcquireResult
		many := args(protocol.ArgAgentID, "wt-b", protocol.ArgSessionID, "s", protocol.ArgTTL, 1000,
			protocol.ArgIntents, []protocol.Intent{{ResourceType: "FILE", ResourcePath: "/repo/src/x.go", Predicate: "MUTATES",
				ClientPath: "/repo-wt-b/src/x.go"}})
		mustOK(t, "acquire_many", r.Call(11, protocol.OpAcquireMany, many), &den)
		if den.Success || den.HeldBy != "wt-a" || den.HeldPath != "/repo-wt-a/src/x.go" {
			t.Fatalf("%s: the junior's acquire_many = %+v; want DIE held by wt-a with held_path /repo-wt-a/src/x.go", when, den)
		}
	}
	want("while serving")

	for i, bad := range []string{"/a\x01b", "/" + strings.Repeat("p", 4096)} {
		a := acquireArgs("wt-b", "s", "/other", "MUTATES", 1000)
		a.ClientPath = bad
		a.Set(protocol.ArgClientPath)
		resp := r.Call(uint64(20+i), protocol.OpAcquire, a)
		expectCode(t, "acquire with a bad client_path", resp, protocol.CodeInvalidArgument)
		if !strings.Contains(resp.Error.Message, "client_path") {
			t.Errorf("bad client_path %d: message %q does not name client_path", i, resp.Error.Message)
		}
	}

	d.Kill(t)
	d.Restart(t)
	r = d.Raw(t)
	want("after kill -9 and a restart")
}
