package tests

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// The payloads below are shaped as Claude Code's hooks reference shows them,
// https://code.claude.com/docs/en/hooks: the common input fields
// (session_id, transcript_path, cwd, permission_mode, hook_event_name),
// then for PreToolUse tool_name, tool_input (Write: file_path, content;
// Edit: file_path, old_string, new_string, replace_all; NotebookEdit:
// notebook_path, new_source) and tool_use_id, and for SessionEnd reason.
// The decision the hook prints is the reference's "PreToolUse decision
// control" object.

// preToolUse returns a PreToolUse hook input for tool with toolInput.
func preToolUse(t *testing.T, session, cwd, tool string, toolInput map[string]any) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"session_id":      session,
		"transcript_path": "/home/user/.claude/projects/p/" + session + ".jsonl",
		"cwd":             cwd,
		"permission_mode": "default",
		"hook_event_name": "PreToolUse",
		"tool_name":       tool,
		"tool_input":      toolInput,
		"tool_use_id":     "toolu_01ABC123",
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sessionEndInput returns a SessionEnd hook input.
func sessionEndInput(session, cwd string) string {
	return `{"session_id":"` + session + `","transcript_path":"/home/user/.claude/projects/p/` + session +
		`.jsonl","cwd":"` + cwd + `","hook_event_name":"SessionEnd","reason":"prompt_input_exit"}`
}

// hookDecision is the JSON a PreToolUse hook prints.
type hookDecision struct {
	HookSpecificOutput *struct {
		HookEventName            string `json:"hookEventName"`
		PermissionDecision       string `json:"permissionDecision"`
		PermissionDecisionReason string `json:"permissionDecisionReason"`
	} `json:"hookSpecificOutput"`
	SystemMessage string `json:"systemMessage"`
}

// runHook runs "klockctl hook claude-code" with input on stdin against
// socket, and returns what it did.
func runHook(t *testing.T, socket, input string, extra ...string) cmdResult {
	t.Helper()
	return runHookEnv(t, socket, nil, input, extra...)
}

// runHookEnv is runHook with more environment.
func runHookEnv(t *testing.T, socket string, env []string, input string, extra ...string) cmdResult {
	t.Helper()
	cmd := kcCommand(t, nil, append([]string{"KLOCK_SOCKET=" + socket}, env...), append([]string{"hook", "claude-code"}, extra...)...)
	cmd.Stdin = strings.NewReader(input)
	return runCmd(t, cmd)
}

// hookAllows requires the hook to have let the edit through silently: exit
// 0 and nothing on stdout (Claude Code's "no decision").
func hookAllows(t *testing.T, what string, r cmdResult) {
	t.Helper()
	if r.code != 0 || strings.TrimSpace(r.stdout) != "" {
		t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit 0 and no output", what, r.code, r.stdout, r.stderr)
	}
}

// hookAllowsRegistering requires what hookAllows does for the first edit
// of an agent klockd did not know: exit 0 and no decision, with context
// telling Claude that the hook registered agent (protocol/README.md
// "Unregistered agents": tools say so).
func hookAllowsRegistering(t *testing.T, what, agent string, r cmdResult) {
	t.Helper()
	var out hookContext
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil || out.HookSpecificOutput == nil ||
		out.HookSpecificOutput.HookEventName != "PreToolUse" || out.HookSpecificOutput.PermissionDecision != "" ||
		!strings.Contains(out.HookSpecificOutput.AdditionalContext, "registered agent "+agent+" with priority") {
		t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit 0, no decision, and context saying %s was registered",
			what, r.code, r.stdout, r.stderr, agent)
	}
}

// hookDecides decodes the hook's JSON output after requiring exit 0.
func hookDecides(t *testing.T, what string, r cmdResult) hookDecision {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d (stderr %q); want 0", what, r.code, r.stderr)
	}
	var d hookDecision
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("%s: stdout %q is not JSON: %v", what, r.stdout, err)
	}
	return d
}

// fileLeases lists the active leases on FILE:path.
func fileLeases(t *testing.T, c *clientlib.Client, path string) []protocol.LeaseInfo {
	t.Helper()
	ls, _, err := c.ListLeases(testCtx(t), clientlib.LeaseFilter{Prefix: "FILE:" + path})
	if err != nil {
		t.Fatal(err)
	}
	var out []protocol.LeaseInfo
	for _, l := range ls {
		if l.Resource == "FILE:"+path {
			out = append(out, l)
		}
	}
	return out
}

func TestClaudeCodeHookLeasesDeniesAndReleases(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "src", "auth.ts")

	// Allow: the first session's Write takes the lease, makes no decision,
	// and tells Claude the session's agent was registered.
	hookAllowsRegistering(t, "first Write", "claude-code:sess-a", runHook(t, d.Socket,
		preToolUse(t, "sess-a", dir, "Write", map[string]any{"file_path": file, "content": "x"}), "--ttl", "1m"))
	ls := fileLeases(t, c, file)
	if len(ls) != 1 || ls[0].AgentID != "claude-code:sess-a" || ls[0].SessionID != "sess-a" || ls[0].Predicate != "MUTATES" {
		t.Fatalf("leases on %s after the Write = %+v; want one MUTATES lease of claude-code:sess-a in sess-a", file, ls)
	}
	first := ls[0]

	// Repeat edit: the same lease comes back, renewed to the new ttl.
	hookAllows(t, "repeat Edit", runHook(t, d.Socket, preToolUse(t, "sess-a", dir, "Edit", map[string]any{
		"file_path": file, "old_string": "x", "new_string": "y", "replace_all": false}), "--ttl", "30m"))
	ls = fileLeases(t, c, file)
	if len(ls) != 1 || ls[0].LeaseID != first.LeaseID {
		t.Fatalf("leases after the repeat edit = %+v; want the same single lease %s", ls, first.LeaseID)
	}
	if ls[0].ExpiresAt < first.ExpiresAt+10*60*1000 {
		t.Fatalf("repeat edit left the lease expiring at %d (was %d); want it renewed to about 30m", ls[0].ExpiresAt, first.ExpiresAt)
	}

	// Deny: another session may not edit the file, and is told who holds it.
	dec := hookDecides(t, "second session's Edit", runHook(t, d.Socket, preToolUse(t, "sess-b", dir, "Edit",
		map[string]any{"file_path": file, "old_string": "y", "new_string": "z", "replace_all": false})))
	h := dec.HookSpecificOutput
	if h == nil || h.HookEventName != "PreToolUse" || h.PermissionDecision != "deny" {
		t.Fatalf("second session's decision = %+v; want a PreToolUse deny", dec)
	}
	for _, part := range []string{file, "claude-code:sess-a", "session sess-a", "MUTATES", "since", "until"} {
		if !strings.Contains(h.PermissionDecisionReason, part) {
			t.Errorf("deny reason %q does not mention %q", h.PermissionDecisionReason, part)
		}
	}

	// A relative path is resolved against the input's cwd; a notebook is
	// named by notebook_path.
	nb := filepath.Join(dir, "analysis.ipynb")
	hookAllows(t, "NotebookEdit", runHook(t, d.Socket, preToolUse(t, "sess-b", dir, "NotebookEdit",
		map[string]any{"notebook_path": "analysis.ipynb", "new_source": "print(1)", "cell_id": "c1", "edit_mode": "replace"})))
	if ls := fileLeases(t, c, nb); len(ls) != 1 || ls[0].AgentID != "claude-code:sess-b" {
		t.Fatalf("leases on %s after NotebookEdit = %+v; want one of claude-code:sess-b", nb, ls)
	}
	hookAllows(t, "MultiEdit", runHook(t, d.Socket, preToolUse(t, "sess-b", dir, "MultiEdit",
		map[string]any{"file_path": filepath.Join(dir, "b.go"), "edits": []any{}})))

	// Other tools are ignored: no output, no lease.
	before, _ := c.ActiveLeaseCount(testCtx(t))
	for _, tool := range []string{"Read", "Bash", "Grep"} {
		hookAllows(t, tool, runHook(t, d.Socket, preToolUse(t, "sess-b", dir, tool,
			map[string]any{"file_path": file, "command": "cat " + file})))
	}
	if n, _ := c.ActiveLeaseCount(testCtx(t)); n != before {
		t.Fatalf("other tools changed the lease count from %d to %d", before, n)
	}

	// SessionEnd releases the session's leases and its agent; the file is
	// then free for the other session.
	if r := runHook(t, d.Socket, sessionEndInput("sess-a", dir)); r.code != 0 {
		t.Fatalf("SessionEnd: exit %d, stderr %q", r.code, r.stderr)
	}
	if ls := fileLeases(t, c, file); len(ls) != 0 {
		t.Fatalf("leases on %s after sess-a's SessionEnd = %+v; want none", file, ls)
	}
	agents, _, err := c.ListAgents(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if a.AgentID == "claude-code:sess-a" {
			t.Fatalf("claude-code:sess-a is still registered after its SessionEnd")
		}
	}
	hookAllows(t, "second session's Edit after the first ended", runHook(t, d.Socket, preToolUse(t, "sess-b", dir, "Edit",
		map[string]any{"file_path": file, "old_string": "y", "new_string": "z", "replace_all": false})))
}

func TestClaudeCodeHookSharedAgent(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	dir := t.TempDir()
	file := filepath.Join(dir, "shared.go")
	env := []string{"KLOCK_AGENT=team"}
	hookAllowsRegistering(t, "first session", "team", runHookEnv(t, d.Socket, env,
		preToolUse(t, "sess-1", dir, "Write", map[string]any{"file_path": file, "content": ""})))
	// The same agent in another session is not given the first session's
	// lease: it is told the file is held in another session.
	dec := hookDecides(t, "second session of the same agent", runHookEnv(t, d.Socket, env,
		preToolUse(t, "sess-2", dir, "Write", map[string]any{"file_path": file, "content": ""})))
	if h := dec.HookSpecificOutput; h == nil || h.PermissionDecision != "deny" ||
		!strings.Contains(h.PermissionDecisionReason, "another session of the same agent") {
		t.Fatalf("second session's decision = %+v; want a deny naming the other session", dec)
	}
	// SessionEnd of the first session releases it, and leaves the shared
	// agent registered.
	if r := runHookEnv(t, d.Socket, env, sessionEndInput("sess-1", dir)); r.code != 0 {
		t.Fatalf("SessionEnd: exit %d, stderr %q", r.code, r.stderr)
	}
	hookAllows(t, "second session after the first ended", runHookEnv(t, d.Socket, env,
		preToolUse(t, "sess-2", dir, "Write", map[string]any{"file_path": file, "content": ""})))
	// A session of a shared agent resumed after its SessionEnd (Claude Code
	// keeps the session_id on resume) may take files again.
	hookAllows(t, "resumed first session", runHookEnv(t, d.Socket, env,
		preToolUse(t, "sess-1", dir, "Write", map[string]any{"file_path": filepath.Join(dir, "other.go"), "content": ""})))
}

func TestClaudeCodeHookDaemonDown(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "nobody-here.sock")
	input := preToolUse(t, "sess-a", dir, "Write", map[string]any{"file_path": filepath.Join(dir, "a"), "content": ""})

	start := time.Now()
	dec := hookDecides(t, "Write with klockd down", runHook(t, socket, input))
	if dec.HookSpecificOutput != nil || !strings.Contains(dec.SystemMessage, "allowed without a lease") ||
		!strings.Contains(dec.SystemMessage, socket) || strings.Contains(dec.SystemMessage, "\n") {
		t.Fatalf("decision with klockd down = %+v; want no decision and a one-line warning naming %s", dec, socket)
	}
	t.Logf("the hook answered in %s with klockd down", time.Since(start))

	dec = hookDecides(t, "Write with klockd down, --fail-closed", runHook(t, socket, input, "--fail-closed"))
	if h := dec.HookSpecificOutput; h == nil || h.PermissionDecision != "deny" || !strings.Contains(h.PermissionDecisionReason, socket) {
		t.Fatalf("--fail-closed decision with klockd down = %+v; want a deny naming %s", dec, socket)
	}

	// SessionEnd with klockd down ends quietly.
	if r := runHook(t, socket, sessionEndInput("sess-a", dir)); r.code != 0 || r.stdout != "" {
		t.Fatalf("SessionEnd with klockd down: exit %d, stdout %q; want exit 0, no output", r.code, r.stdout)
	}
}

func TestClaudeCodeHookBadInput(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	for _, tc := range []struct{ name, input, want string }{
		{"not JSON", "{bad", "not a JSON object"},
		{"no session", `{"hook_event_name":"PreToolUse","tool_name":"Write","tool_input":{"file_path":"/a"}}`, "session_id"},
		{"no path", `{"session_id":"s","hook_event_name":"PreToolUse","tool_name":"Edit","tool_input":{}}`, "tool_input.file_path"},
	} {
		// Exit 1 is a non-blocking error in Claude Code: the edit proceeds
		// and the first line of stderr is shown.
		r := runHook(t, d.Socket, tc.input)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 1 and an error mentioning %q", tc.name, r.code, r.stdout, r.stderr, tc.want)
		}
	}
}
