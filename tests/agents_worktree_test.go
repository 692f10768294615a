package tests

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klockd/klock/tests/harness"
)

// hookContext is a PreToolUse hook's output when it makes no decision but
// tells Claude something: hookSpecificOutput with additionalContext
// (https://code.claude.com/docs/en/hooks, "PreToolUse decision control"
// and "Add context for Claude").
type hookContext struct {
	HookSpecificOutput *struct {
		HookEventName      string `json:"hookEventName"`
		PermissionDecision string `json:"permissionDecision"`
		AdditionalContext  string `json:"additionalContext"`
	} `json:"hookSpecificOutput"`
}

// TestAgentsInWorktreesSayWhereHoldersWork: the Claude Code hook, the MCP
// server and klockctl why, in two linked worktrees of one repository (the
// real git): the hook and the MCP server send the path they were given
// (client_path) with the key of the main worktree, so the lease shows where
// its holder works; a denial in the other worktree and klockctl why say
// that path; and the hook tells Claude when it registered the session's
// agent, once (protocol/README.md "Unregistered agents").
func TestAgentsInWorktreesSayWhereHoldersWork(t *testing.T) {
	p := gitCheckouts(t)
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	mine := filepath.Join(p["wt-a"], "src", "auth.ts")
	key := filepath.Join(p["repo"], "src", "auth.ts")

	r := runHook(t, d.Socket, preToolUse(t, "sess-a", p["wt-a"], "Edit",
		map[string]any{"file_path": mine, "old_string": "x", "new_string": "y", "replace_all": false}))
	var out hookContext
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil || out.HookSpecificOutput == nil ||
		out.HookSpecificOutput.HookEventName != "PreToolUse" || out.HookSpecificOutput.PermissionDecision != "" ||
		!strings.Contains(out.HookSpecificOutput.AdditionalContext, "registered agent claude-code:sess-a with priority") {
		t.Fatalf("first edit of a new session: exit %d, stdout %q, stderr %q; want no decision and context saying "+
			"the agent was registered", r.code, r.stdout, r.stderr)
	}
	ls := fileLeases(t, c, key)
	if len(ls) != 1 || ls[0].ClientPath != mine {
		t.Fatalf("leases on %s after the edit in wt-a = %+v; want one with client_path %s", key, ls, mine)
	}
	// The agent is registered now: a second edit says nothing.
	hookAllows(t, "second edit", runHook(t, d.Socket, preToolUse(t, "sess-a", p["wt-a"], "Write",
		map[string]any{"file_path": filepath.Join(p["wt-a"], "src", "new.ts"), "content": "z"})))

	// Another session, in the other worktree, is denied the same file and
	// told where its holder works.
	dec := hookDecides(t, "edit in wt-b", runHook(t, d.Socket, preToolUse(t, "sess-b", p["wt-b"], "Edit",
		map[string]any{"file_path": filepath.Join(p["wt-b"], "src", "auth.ts"), "old_string": "x", "new_string": "y", "replace_all": false})))
	if h := dec.HookSpecificOutput; h == nil || h.PermissionDecision != "deny" || !strings.Contains(h.PermissionDecisionReason, "as "+mine) ||
		!strings.Contains(h.PermissionDecisionReason, "registered agent claude-code:sess-b") {
		t.Fatalf("edit in wt-b = %+v; want a deny naming %s, and that sess-b's agent was registered", dec, mine)
	}

	// klockctl why, from wt-b by a relative path: the holder's path in the
	// AS column.
	why := kcIn(t, d, p["wt-b"], "why", "src/auth.ts")
	if why.code != 0 || !strings.Contains(why.stdout, "AS") || !strings.Contains(why.stdout, mine) {
		t.Fatalf("klockctl why src/auth.ts in wt-b = exit %d\n%s%s\nwant the holder's path %s", why.code, why.stdout, why.stderr, mine)
	}

	// The MCP server in wt-b: denied likewise; a file it gets keeps the
	// path it was given.
	m := startMCPIn(t, d.Socket, p["wt-b"], "worktree-b")
	var got struct {
		Granted bool   `json:"granted"`
		Message string `json:"message"`
	}
	m.callOK(t, "klock_acquire", map[string]any{"paths": []string{"src/auth.ts"}}, &got)
	if got.Granted || !strings.Contains(got.Message, "as "+mine) {
		t.Fatalf("MCP klock_acquire src/auth.ts in wt-b = %+v; want denied naming %s", got, mine)
	}
	m.callOK(t, "klock_acquire", map[string]any{"paths": []string{"src/db.ts"}}, &got)
	theirs := filepath.Join(p["wt-b"], "src", "db.ts")
	if ls := fileLeases(t, c, filepath.Join(p["repo"], "src", "db.ts")); !got.Granted || len(ls) != 1 || ls[0].ClientPath != theirs {
		t.Fatalf("MCP klock_acquire src/db.ts in wt-b = %+v, leases %+v; want granted with client_path %s", got, ls, theirs)
	}
}
