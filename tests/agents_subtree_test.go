package tests

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/tests/harness"
)

// TestAgentsRespectSubtreeLeases: a folder leased as a subtree (issue 14)
// covers the files under it for the Claude Code hook and the pre-commit
// guard too, and nothing beside it.
func TestAgentsRespectSubtreeLeases(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	repo := gitRepo(t, "src/auth/login.go", "srcfoo.go", "docs/x.md")
	ctx := testCtx(t)
	if _, err := c.Register(ctx, "refactorer", nil); err != nil {
		t.Fatal(err)
	}
	subtree := filepath.Join(repo, "src") + "/"
	res, err := c.AcquireLease(ctx, "refactorer", "s1", "FILE", subtree, "MUTATES", time.Minute)
	if err != nil || !res.Success {
		t.Fatalf("acquire %s: %+v, %v", subtree, res, err)
	}

	// The hook: an edit deep inside the subtree is denied, naming the
	// holder; a file beside it whose name merely starts the same is not.
	inside := filepath.Join(repo, "src", "auth", "login.go")
	dec := hookDecides(t, "Edit inside the leased subtree", runHook(t, d.Socket, preToolUse(t, "sess-x", repo, "Edit",
		map[string]any{"file_path": inside, "old_string": "v1", "new_string": "v2", "replace_all": false})))
	if h := dec.HookSpecificOutput; h == nil || h.PermissionDecision != "deny" || !strings.Contains(h.PermissionDecisionReason, "refactorer") {
		t.Fatalf("hook on %s under %s = %+v; want a deny naming refactorer", inside, subtree, dec)
	}
	hookAllows(t, "Edit beside the subtree", runHook(t, d.Socket, preToolUse(t, "sess-x", repo, "Edit",
		map[string]any{"file_path": filepath.Join(repo, "srcfoo.go"), "old_string": "v1", "new_string": "v2", "replace_all": false})))

	// The guard: a staged file under the subtree is refused for another
	// agent and allowed for the holder; files outside it pass.
	writeFile(t, inside, "v2\n")
	writeFile(t, filepath.Join(repo, "docs", "x.md"), "v2\n")
	gitIn(t, repo, "add", "docs/x.md")
	if r := guardIn(t, d, repo, "committer"); r.code != 0 {
		t.Fatalf("guard on a file outside the subtree: exit %d, stderr %q", r.code, r.stderr)
	}
	gitIn(t, repo, "add", "src/auth/login.go")
	r := guardIn(t, d, repo, "committer")
	if r.code != 1 || !strings.Contains(r.stderr, "login.go") || !strings.Contains(r.stderr, "refactorer") {
		t.Fatalf("guard on a file under another agent's subtree: exit %d, stderr %q; want 1 naming login.go and refactorer", r.code, r.stderr)
	}
	if r := guardIn(t, d, repo, "refactorer"); r.code != 0 {
		t.Fatalf("guard for the subtree's own holder: exit %d, stderr %q; want 0", r.code, r.stderr)
	}

	// MCP: an agent asking for a folder with a trailing '/' takes the
	// subtree, and the file under it is then refused to another agent.
	older := startMCP(t, d.Socket, "mcp-agent", "--agent", "mcp-older", "--priority", "1")
	var got mcpAcquireOut
	docs := filepath.Join(repo, "docs") + "/"
	older.callOK(t, "klock_acquire", map[string]any{"paths": []string{docs}}, &got)
	if !got.Granted || len(got.Leases) != 1 || got.Leases[0].Resource != "FILE:"+docs {
		t.Fatalf("klock_acquire of %s = %+v; want one lease on FILE:%s", docs, got, docs)
	}
	dec = hookDecides(t, "Edit inside the MCP agent's subtree", runHook(t, d.Socket, preToolUse(t, "sess-x", repo, "Write",
		map[string]any{"file_path": filepath.Join(repo, "docs", "new", "y.md"), "content": "y"})))
	if h := dec.HookSpecificOutput; h == nil || h.PermissionDecision != "deny" || !strings.Contains(h.PermissionDecisionReason, "mcp-older") {
		t.Fatalf("hook under the MCP agent's subtree = %+v; want a deny naming mcp-older", dec)
	}
}
