package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klockd/klock/tests/harness"
)

// sessionStartInput is a SessionStart hook input as Claude Code's hooks
// reference shows it (https://code.claude.com/docs/en/hooks, "SessionStart
// input"): the common fields, source and model.
func sessionStartInput(t *testing.T, session, cwd, source string) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"session_id":      session,
		"transcript_path": "/home/user/.claude/projects/p/" + session + ".jsonl",
		"cwd":             cwd,
		"hook_event_name": "SessionStart",
		"source":          source,
		"model":           "claude-sonnet-4-6",
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestClaudeCodeSessionStartGivesCommitsTheAgent closes the guard's gap for
// Claude Code: the Bash tool's git commit runs klockctl guard without
// knowing the session's agent, so the files the session's own edits leased
// looked like another agent's. SessionStart appends "export
// KLOCK_AGENT=claude-code:<session_id>" to $CLAUDE_ENV_FILE ("Persist
// environment variables" in the hooks reference: Claude Code applies the
// file's export lines to the session's later Bash commands), and a commit
// run as the Bash tool runs it, with that file sourced, goes through the
// guard for the session's own files and is still refused another agent's.
func TestClaudeCodeSessionStartGivesCommitsTheAgent(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	repo := gitRepo(t, "mine.go", "theirs.go")
	kcOK(t, nil, nil, "integrate", "git", "--dir", repo)
	envFile := filepath.Join(t.TempDir(), "claude-env.sh")
	writeFile(t, envFile, "export OTHER_HOOK=1\n") // another SessionStart hook's line, kept

	r := runHookEnv(t, d.Socket, []string{"CLAUDE_ENV_FILE=" + envFile}, sessionStartInput(t, "sess-9", repo, "startup"))
	if r.code != 0 || r.stdout != "" {
		t.Fatalf("SessionStart: exit %d, stdout %q, stderr %q; want exit 0 and no output", r.code, r.stdout, r.stderr)
	}
	if b, _ := os.ReadFile(envFile); string(b) != "export OTHER_HOOK=1\nexport KLOCK_AGENT=claude-code:sess-9\n" {
		t.Fatalf("CLAUDE_ENV_FILE after SessionStart = %q; want the other hook's line and the agent's export appended", b)
	}

	// The session edits mine.go (its hook takes the lease); another agent
	// holds theirs.go.
	mine := filepath.Join(repo, "mine.go")
	if r := runHook(t, d.Socket, preToolUse(t, "sess-9", repo, "Write", map[string]any{"file_path": mine, "content": "v2\n"})); r.code != 0 {
		t.Fatalf("PreToolUse: exit %d, stderr %q", r.code, r.stderr)
	}
	holdFile(t, c, "other-agent", filepath.Join(repo, "theirs.go"))
	writeFile(t, mine, "v2\n")
	gitIn(t, repo, "add", "mine.go")

	// bashCommit commits as the Bash tool does: a shell with the session's
	// environment, the env file applied when sourced.
	bashCommit := func(sourced bool, msg string) (string, error) {
		script := `exec git commit -q -m "$1"`
		if sourced {
			script = `. "$CLAUDE_ENV_FILE" && ` + script
		}
		cmd := exec.Command("sh", "-c", script, "sh", msg)
		cmd.Dir = repo
		cmd.Env = gitEnv("KLOCK_SOCKET="+d.Socket, "CLAUDE_ENV_FILE="+envFile)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// Without the export, the guard does not know the committer: the
	// session's own file is refused (the gap).
	if out, err := bashCommit(false, "no agent"); err == nil || !strings.Contains(out, "claude-code:sess-9") {
		t.Fatalf("commit without the session's export: err %v, output %q; want refused naming claude-code:sess-9", err, out)
	}
	if out, err := bashCommit(true, "mine"); err != nil {
		t.Fatalf("commit of the session's own file with its export sourced: %v\n%s", err, out)
	}
	writeFile(t, filepath.Join(repo, "theirs.go"), "v2\n")
	gitIn(t, repo, "add", "theirs.go")
	if out, err := bashCommit(true, "theirs"); err == nil || !strings.Contains(out, "other-agent") {
		t.Fatalf("commit of another agent's file with the export sourced: err %v, output %q; want refused naming other-agent", err, out)
	}

	// Should Claude Code also give the hooks that environment, a
	// KLOCK_AGENT equal to the session's own name is still the session's own
	// agent: its SessionEnd unregisters it, as for a session without it.
	own := []string{"KLOCK_AGENT=claude-code:sess-9"}
	hookAllows(t, "edit with the exported agent", runHookEnv(t, d.Socket, own,
		preToolUse(t, "sess-9", repo, "Edit", map[string]any{"file_path": mine, "old_string": "v2", "new_string": "v3", "replace_all": false})))
	if r := runHookEnv(t, d.Socket, own, sessionEndInput("sess-9", repo)); r.code != 0 {
		t.Fatalf("SessionEnd: exit %d, stderr %q", r.code, r.stderr)
	}
	agents, _, err := c.ListAgents(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if a.AgentID == "claude-code:sess-9" {
			t.Fatalf("claude-code:sess-9 is still registered after SessionEnd with KLOCK_AGENT set to it; want it unregistered as the session's own")
		}
	}
	if ls := fileLeases(t, c, mine); len(ls) != 0 {
		t.Fatalf("leases on %s after SessionEnd = %+v; want none", mine, ls)
	}

	// A shared agent ($KLOCK_AGENT of another name) is inherited by the
	// Bash commands already: nothing is written.
	before, _ := os.ReadFile(envFile)
	if r := runHookEnv(t, d.Socket, []string{"CLAUDE_ENV_FILE=" + envFile, "KLOCK_AGENT=team"},
		sessionStartInput(t, "sess-10", repo, "resume")); r.code != 0 || r.stdout != "" {
		t.Fatalf("SessionStart with a shared agent: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if after, _ := os.ReadFile(envFile); string(after) != string(before) {
		t.Fatalf("SessionStart with KLOCK_AGENT=team wrote %q; want nothing", strings.TrimPrefix(string(after), string(before)))
	}

	// Without CLAUDE_ENV_FILE the user is told what a commit will not know.
	var warn struct {
		SystemMessage string `json:"systemMessage"`
	}
	r = runHook(t, d.Socket, sessionStartInput(t, "sess-11", repo, "startup"))
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &warn) != nil || !strings.Contains(warn.SystemMessage, "CLAUDE_ENV_FILE") ||
		!strings.Contains(warn.SystemMessage, "KLOCK_AGENT=claude-code:sess-11") {
		t.Fatalf("SessionStart without CLAUDE_ENV_FILE: exit %d, stdout %q; want a warning to the user naming the export", r.code, r.stdout)
	}
}
