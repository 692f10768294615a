package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/tests/harness"
)

// needGit skips (or, in CI, fails) when git is not installed.
func needGit(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("git is not installed (.ci/run installs it): %v", err)
		}
		t.Skip("git is not installed; apt-get install git")
	}
}

// gitRepo makes a repository in a new directory with files committed, and
// returns its path (symlinks resolved, as git reports it).
func gitRepo(t *testing.T, files ...string) string {
	t.Helper()
	needGit(t)
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	gitIn(t, dir, "init", "-q", "-b", "main")
	for _, f := range files {
		writeFile(t, filepath.Join(dir, f), "v1\n")
	}
	if len(files) > 0 {
		gitIn(t, dir, "add", "-A")
		gitIn(t, dir, "commit", "-q", "-m", "first")
	}
	return dir
}

// gitIn runs git in dir with a fixed identity and no user configuration.
func gitIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = gitEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func gitEnv(extra ...string) []string {
	return testEnv(append([]string{"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com"}, extra...)...)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// holdFile takes a MUTATES lease on path for agent.
func holdFile(t *testing.T, c *clientlib.Client, agent, path string) {
	t.Helper()
	ctx := testCtx(t)
	if _, err := c.Register(ctx, agent, nil); err != nil {
		t.Fatal(err)
	}
	res, err := c.AcquireLease(ctx, agent, "s1", "FILE", path, "MUTATES", time.Minute)
	if err != nil || !res.Success {
		t.Fatalf("acquire %s for %s: %+v, %v", path, agent, res, err)
	}
}

// guardIn runs klockctl guard in dir as agent ("" for none).
func guardIn(t *testing.T, d *harness.Daemon, dir, agent string, args ...string) cmdResult {
	t.Helper()
	cmd := kcCommand(t, d, []string{"KLOCK_AGENT=" + agent}, append([]string{"guard"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Env, gitEnv()...)
	return runCmd(t, cmd)
}

func TestGuardRefusesFilesHeldByOthers(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	repo := gitRepo(t, "theirs.go", "mine.go", "free.go", "old.go")
	for _, f := range []string{"theirs.go", "mine.go", "free.go"} {
		writeFile(t, filepath.Join(repo, f), "v2\n")
	}
	holdFile(t, c, "other-agent", filepath.Join(repo, "theirs.go"))
	holdFile(t, c, "committer", filepath.Join(repo, "mine.go"))

	// Nothing staged yet: nothing to check.
	if r := guardIn(t, d, repo, "committer"); r.code != 0 {
		t.Fatalf("guard with nothing staged: exit %d, stderr %q", r.code, r.stderr)
	}

	// Held by the committer and by nobody: allowed.
	gitIn(t, repo, "add", "mine.go", "free.go")
	if r := guardIn(t, d, repo, "committer"); r.code != 0 {
		t.Fatalf("guard on the committer's own and free files: exit %d, stderr %q", r.code, r.stderr)
	}
	// The same files under another identity: mine.go is someone else's.
	if r := guardIn(t, d, repo, "stranger"); r.code != 1 || !strings.Contains(r.stderr, "committer") {
		t.Fatalf("guard as another agent: exit %d, stderr %q; want 1 naming committer", r.code, r.stderr)
	}

	// Held by another agent: refused, with a table naming file and holder.
	gitIn(t, repo, "add", "theirs.go")
	r := guardIn(t, d, repo, "committer")
	if r.code != 1 {
		t.Fatalf("guard on another agent's file: exit %d; want 1 (stderr %q)", r.code, r.stderr)
	}
	for _, part := range []string{"FILE", "HOLDER", "PREDICATE", "UNTIL", "theirs.go", "other-agent", "MUTATES", "--no-verify"} {
		if !strings.Contains(r.stderr, part) {
			t.Errorf("guard's refusal %q does not mention %q", r.stderr, part)
		}
	}
	if strings.Contains(r.stderr, "mine.go") || strings.Contains(r.stderr, "free.go") {
		t.Errorf("guard's refusal %q lists files no other agent holds", r.stderr)
	}
	// --warn: the same table, exit 0.
	if w := guardIn(t, d, repo, "committer", "--warn"); w.code != 0 || !strings.Contains(w.stderr, "theirs.go") {
		t.Fatalf("guard --warn: exit %d, stderr %q; want 0 and the table", w.code, w.stderr)
	}

	// A rename of a held file is refused too: the old path is staged as
	// deleted.
	gitIn(t, repo, "reset", "-q")
	holdFile(t, c, "other-agent", filepath.Join(repo, "old.go"))
	gitIn(t, repo, "mv", "old.go", "new.go")
	if r := guardIn(t, d, repo, "committer"); r.code != 1 || !strings.Contains(r.stderr, "old.go") {
		t.Fatalf("guard on a rename of a held file: exit %d, stderr %q; want 1 naming old.go", r.code, r.stderr)
	}

	// klockd unreachable: allowed with a warning.
	cmd := kcCommand(t, nil, []string{"KLOCK_SOCKET=" + filepath.Join(t.TempDir(), "none.sock")}, "guard")
	cmd.Dir = repo
	cmd.Env = append(cmd.Env, gitEnv()...)
	if r := runCmd(t, cmd); r.code != 0 || !strings.Contains(r.stderr, "commit allowed") {
		t.Fatalf("guard with klockd down: exit %d, stderr %q; want 0 and a warning", r.code, r.stderr)
	}
}

func TestIntegrateClaudeCodeKeepsSettings(t *testing.T) {
	dir := t.TempDir()
	settings := filepath.Join(dir, ".claude", "settings.json")
	writeFile(t, settings, `{
  "permissions": {"allow": ["Bash(npm test)"]},
  "hooks": {
    "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "/usr/local/bin/check-bash"}]}],
    "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}]
  }
}`)
	writeFile(t, filepath.Join(dir, ".mcp.json"), `{"mcpServers": {"github": {"type": "http", "url": "https://api.example.com/mcp"}}}`)
	_, bin := harness.Binaries(t)

	// --dry-run changes nothing.
	beforeSettings, _ := os.ReadFile(settings)
	r := kcOK(t, nil, nil, "integrate", "claude-code", "--dir", dir, "--dry-run")
	if !strings.Contains(r.stdout, "would be updated") {
		t.Fatalf("dry run printed %q; want what it would change", r.stdout)
	}
	if after, _ := os.ReadFile(settings); string(after) != string(beforeSettings) {
		t.Fatalf("--dry-run changed %s", settings)
	}

	kcOK(t, nil, nil, "integrate", "claude-code", "--dir", dir)
	var s struct {
		Permissions map[string]any `json:"permissions"`
		Hooks       map[string][]struct {
			Matcher string `json:"matcher"`
			Hooks   []struct {
				Type    string `json:"type"`
				Command string `json:"command"`
				Timeout int    `json:"timeout"`
			} `json:"hooks"`
		} `json:"hooks"`
	}
	readJSON(t, settings, &s)
	if s.Permissions == nil || len(s.Hooks["Stop"]) != 1 || s.Hooks["Stop"][0].Hooks[0].Command != "notify-send done" {
		t.Fatalf("settings lost what was there: %+v", s)
	}
	pre := s.Hooks["PreToolUse"]
	if len(pre) != 2 || pre[0].Matcher != "Bash" || pre[1].Matcher != "Edit|Write|MultiEdit|NotebookEdit" ||
		pre[1].Hooks[0].Type != "command" || pre[1].Hooks[0].Command != bin+" hook claude-code" {
		t.Fatalf("PreToolUse hooks = %+v; want the Bash group kept and the klock group added running %s", pre, bin)
	}
	end := s.Hooks["SessionEnd"]
	if len(end) != 1 || end[0].Hooks[0].Command != bin+" hook claude-code" || end[0].Hooks[0].Timeout == 0 {
		t.Fatalf("SessionEnd hooks = %+v; want the klock hook with a timeout", end)
	}
	start := s.Hooks["SessionStart"]
	if len(start) != 1 || start[0].Matcher != "" || start[0].Hooks[0].Command != bin+" hook claude-code" {
		t.Fatalf("SessionStart hooks = %+v; want the klock hook for every source, running %s", start, bin)
	}
	var m struct {
		MCPServers map[string]struct {
			Type    string   `json:"type"`
			Command string   `json:"command"`
			Args    []string `json:"args"`
			URL     string   `json:"url"`
		} `json:"mcpServers"`
	}
	readJSON(t, filepath.Join(dir, ".mcp.json"), &m)
	if k := m.MCPServers["klock"]; k.Type != "stdio" || k.Command != bin || len(k.Args) != 1 || k.Args[0] != "mcp" {
		t.Fatalf(".mcp.json klock entry = %+v; want stdio running %s mcp", k, bin)
	}
	if m.MCPServers["github"].URL == "" {
		t.Fatalf(".mcp.json lost the github server: %+v", m)
	}

	// Idempotent: a second run changes no byte.
	first, _ := os.ReadFile(settings)
	firstMCP, _ := os.ReadFile(filepath.Join(dir, ".mcp.json"))
	r = kcOK(t, nil, nil, "integrate", "claude-code", "--dir", dir)
	if !strings.Contains(r.stdout, "up to date") {
		t.Errorf("second run printed %q; want up to date", r.stdout)
	}
	second, _ := os.ReadFile(settings)
	secondMCP, _ := os.ReadFile(filepath.Join(dir, ".mcp.json"))
	if string(first) != string(second) || string(firstMCP) != string(secondMCP) {
		t.Fatalf("second run changed the files:\n%s\n---\n%s", first, second)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
}

func TestIntegrateGitChainsExistingHook(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	repo := gitRepo(t, "a.go", "b.go")
	ran := filepath.Join(t.TempDir(), "existing-hook-ran")
	existing := filepath.Join(repo, ".git", "hooks", "pre-commit")
	writeFile(t, existing, "#!/bin/sh\necho ran >> '"+ran+"'\n")
	if err := os.Chmod(existing, 0o755); err != nil {
		t.Fatal(err)
	}

	kcOK(t, nil, nil, "integrate", "git", "--dir", repo)
	r := kcOK(t, nil, nil, "integrate", "git", "--dir", repo)
	if !strings.Contains(r.stdout, "up to date") {
		t.Fatalf("second integrate git printed %q; want up to date", r.stdout)
	}
	if _, err := os.Stat(existing + ".klock-chained"); err != nil {
		t.Fatalf("the existing hook was not kept: %v", err)
	}

	// A commit of a file another agent holds is refused by the guard, after
	// the existing hook ran.
	holdFile(t, c, "other-agent", filepath.Join(repo, "a.go"))
	writeFile(t, filepath.Join(repo, "a.go"), "v2\n")
	gitIn(t, repo, "add", "a.go")
	commit := exec.Command("git", "commit", "-q", "-m", "change a")
	commit.Dir = repo
	commit.Env = gitEnv("KLOCK_SOCKET="+d.Socket, "KLOCK_AGENT=committer")
	out, err := commit.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "other-agent") {
		t.Fatalf("git commit of a held file: err %v, output %q; want refused naming other-agent", err, out)
	}
	if b, _ := os.ReadFile(ran); strings.Count(string(b), "ran") != 1 {
		t.Fatalf("the existing hook ran %q times; want once", b)
	}

	// --no-verify skips both, as the guard's help says.
	commit = exec.Command("git", "commit", "-q", "--no-verify", "-m", "change a anyway")
	commit.Dir = repo
	commit.Env = gitEnv("KLOCK_SOCKET=" + d.Socket)
	if out, err := commit.CombinedOutput(); err != nil {
		t.Fatalf("git commit --no-verify: %v\n%s", err, out)
	}
}

// TestGuardRefusesFilesInsideAnotherAgentsSubtree: a lease on a directory
// (a subtree key, FILE:<dir>/) covers every file below it, so the guard
// refuses a commit of such a file by another agent, names the subtree the
// file is held through, and lets the subtree's holder commit it.
func TestGuardRefusesFilesInsideAnotherAgentsSubtree(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	repo := gitRepo(t, "src/auth/login.go", "src/authz.go")
	writeFile(t, filepath.Join(repo, "src", "auth", "login.go"), "v2\n")
	writeFile(t, filepath.Join(repo, "src", "authz.go"), "v2\n")
	holdFile(t, c, "dir-owner", filepath.Join(repo, "src", "auth")+"/")

	// Next to the subtree, not in it: src/authz.go is free.
	gitIn(t, repo, "add", "src/authz.go")
	if r := guardIn(t, d, repo, "committer"); r.code != 0 {
		t.Fatalf("guard on src/authz.go beside the subtree src/auth/: exit %d, stderr %q; want 0", r.code, r.stderr)
	}
	gitIn(t, repo, "add", "src/auth/login.go")
	r := guardIn(t, d, repo, "committer")
	if r.code != 1 || !strings.Contains(r.stderr, "dir-owner") ||
		!strings.Contains(r.stderr, "src/auth/login.go (in "+filepath.Join(repo, "src", "auth")+"/)") {
		t.Fatalf("guard on a file inside another agent's subtree: exit %d, stderr %q; want 1 naming dir-owner and the subtree", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "src/authz.go") {
		t.Fatalf("guard listed src/authz.go, which is outside the subtree: %q", r.stderr)
	}
	if r := guardIn(t, d, repo, "dir-owner"); r.code != 0 {
		t.Fatalf("guard as the subtree's holder: exit %d, stderr %q; want 0", r.code, r.stderr)
	}
}
