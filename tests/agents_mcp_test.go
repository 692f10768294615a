package tests

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/tests/harness"
)

// These tests drive "klockctl mcp" with the official MCP Go SDK's own
// client over its CommandTransport (stdin/stdout of the real binary), as an
// MCP client such as Claude Code does. Tool results are checked as the MCP
// specification's tools page describes them
// (https://modelcontextprotocol.io/specification/2025-11-25/server/tools):
// structuredContent for the result, isError for a failure the model should
// see.

// mcpAgent is one MCP client session with a klockctl mcp server.
type mcpAgent struct {
	cs  *mcp.ClientSession
	cmd *exec.Cmd
}

// startMCP starts "klockctl mcp args..." against socket and connects an MCP
// client named clientName to it. The session is closed when the test ends.
func startMCP(t *testing.T, socket, clientName string, args ...string) *mcpAgent {
	t.Helper()
	return startMCPIn(t, socket, "", clientName, args...)
}

// startMCPIn is startMCP with the server working in dir ("" = the test's).
func startMCPIn(t *testing.T, socket, dir, clientName string, args ...string) *mcpAgent {
	t.Helper()
	cmd := kcCommand(t, nil, []string{"KLOCK_SOCKET=" + socket}, append([]string{"mcp"}, args...)...)
	cmd.Dir = dir
	client := mcp.NewClient(&mcp.Implementation{Name: clientName, Version: "1.0"}, nil)
	cs, err := client.Connect(testCtx(t), &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connecting to klockctl mcp: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return &mcpAgent{cs: cs, cmd: cmd}
}

// call calls tool with arguments and returns the result.
func (m *mcpAgent) call(t *testing.T, tool string, arguments map[string]any) *mcp.CallToolResult {
	t.Helper()
	r, err := m.cs.CallTool(testCtx(t), &mcp.CallToolParams{Name: tool, Arguments: arguments})
	if err != nil {
		t.Fatalf("%s(%v): protocol error %v; want a result", tool, arguments, err)
	}
	return r
}

// callOK calls tool, requires a result that is not an error, and decodes
// its structured content into out.
func (m *mcpAgent) callOK(t *testing.T, tool string, arguments map[string]any, out any) {
	t.Helper()
	r := m.call(t, tool, arguments)
	if r.IsError {
		t.Fatalf("%s(%v) is a tool error: %s", tool, arguments, resultText(r))
	}
	b, err := json.Marshal(r.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: structured content %s: %v", tool, b, err)
	}
}

// resultText joins a result's text content.
func resultText(r *mcp.CallToolResult) string {
	var parts []string
	for _, c := range r.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

type mcpLeaseOut struct {
	LeaseID   string `json:"lease_id"`
	Resource  string `json:"resource"`
	Predicate string `json:"predicate"`
	ExpiresAt string `json:"expires_at"`
}

type mcpAcquireOut struct {
	Granted    bool          `json:"granted"`
	Leases     []mcpLeaseOut `json:"leases"`
	Reason     string        `json:"reason"`
	HeldBy     string        `json:"held_by"`
	WaitTimeMs int64         `json:"wait_time_ms"`
	Message    string        `json:"message"`
}

type mcpStatusOut struct {
	Agent   string        `json:"agent"`
	Session string        `json:"session"`
	Leases  []mcpLeaseOut `json:"leases"`
	Message string        `json:"message"`
}

func TestMCPTwoAgents(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	dir := t.TempDir()
	auth, db := filepath.Join(dir, "auth.ts"), filepath.Join(dir, "db.ts")

	first := startMCP(t, d.Socket, "first-agent")
	second := startMCP(t, d.Socket, "second-agent", "--agent", "second")

	tools, err := first.cs.ListTools(testCtx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
		if tl.OutputSchema == nil || tl.Description == "" {
			t.Errorf("tool %s has no output schema or no description", tl.Name)
		}
	}
	slices.Sort(names)
	if want := []string{"klock_acquire", "klock_release", "klock_status", "klock_why"}; !slices.Equal(names, want) {
		t.Fatalf("tools = %v; want %v", names, want)
	}

	// The first agent takes both files at once.
	var got mcpAcquireOut
	first.callOK(t, "klock_acquire", map[string]any{"paths": []string{auth, db}}, &got)
	t.Logf("grant: %s", got.Message)
	if !got.Granted || len(got.Leases) != 2 || got.Leases[0].Predicate != "MUTATES" {
		t.Fatalf("first agent's acquire = %+v; want 2 MUTATES leases", got)
	}
	var st mcpStatusOut
	first.callOK(t, "klock_status", nil, &st)
	if !strings.HasPrefix(st.Agent, "first-agent-") || len(st.Leases) != 2 {
		t.Fatalf("first agent's status = %+v; want agent first-agent-<pid> holding 2 leases", st)
	}

	// The second (younger) agent is refused, and told who holds the file.
	var denied mcpAcquireOut
	second.callOK(t, "klock_acquire", map[string]any{"paths": []string{"FILE:" + auth}}, &denied)
	t.Logf("DIE: %s", denied.Message)
	if denied.Granted || denied.Reason != "DIE" || denied.HeldBy != st.Agent || len(denied.Leases) != 0 {
		t.Fatalf("second agent's acquire = %+v; want DIE held by %s", denied, st.Agent)
	}
	for _, part := range []string{st.Agent, "session " + st.Session, "DIE", "klock_acquire again"} {
		if !strings.Contains(denied.Message, part) {
			t.Errorf("DIE message %q does not mention %q", denied.Message, part)
		}
	}

	// klock_why names the holder.
	var why struct {
		Resource string `json:"resource"`
		Verdict  string `json:"verdict"`
		HeldBy   string `json:"held_by"`
		Holders  []struct {
			Agent     string `json:"agent"`
			Conflicts bool   `json:"conflicts"`
		} `json:"holders"`
		Message string `json:"message"`
	}
	second.callOK(t, "klock_why", map[string]any{"path": auth}, &why)
	t.Logf("why: %s", why.Message)
	if why.Resource != "FILE:"+auth || why.Verdict != "DIE" || why.HeldBy != st.Agent || len(why.Holders) != 1 ||
		why.Holders[0].Agent != st.Agent || !why.Holders[0].Conflicts || !strings.Contains(why.Message, st.Agent) {
		t.Fatalf("klock_why = %+v; want DIE, held by %s, named in the message", why, st.Agent)
	}
	// A file nobody holds would be granted.
	second.callOK(t, "klock_why", map[string]any{"path": filepath.Join(dir, "free.ts")}, &why)
	if why.Verdict != "GRANT" || len(why.Holders) != 0 {
		t.Fatalf("klock_why on a free file = %+v; want GRANT and no holders", why)
	}

	// An older agent is told it may wait.
	older := startMCP(t, d.Socket, "older-agent", "--agent", "older", "--priority", "1")
	var wait mcpAcquireOut
	older.callOK(t, "klock_acquire", map[string]any{"paths": []string{db}}, &wait)
	t.Logf("WAIT: %s", wait.Message)
	if wait.Granted || wait.Reason != "WAIT" || !strings.Contains(wait.Message, "wait_seconds") {
		t.Fatalf("older agent's acquire = %+v; want WAIT telling it to use wait_seconds", wait)
	}

	// Closing the first agent's server frees its files and its agent.
	if err := first.cs.Close(); err != nil {
		t.Logf("closing the first MCP server: %v", err)
	}
	waitFor(t, "the first agent's leases to be released", func() bool {
		n, err := c.ActiveLeaseCount(testCtx(t))
		return err == nil && n == 0
	})
	agents, _, err := c.ListAgents(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if a.AgentID == st.Agent {
			t.Errorf("agent %s is still registered after its MCP server exited", st.Agent)
		}
	}
	var granted mcpAcquireOut
	second.callOK(t, "klock_acquire", map[string]any{"paths": []string{auth}, "wait_seconds": 5}, &granted)
	if !granted.Granted || len(granted.Leases) != 1 || granted.Leases[0].Resource != "FILE:"+auth {
		t.Fatalf("second agent's acquire after the first left = %+v; want granted", granted)
	}

	// Release by path; a path not held is reported.
	var rel struct {
		Released []mcpLeaseOut `json:"released"`
		NotHeld  []string      `json:"not_held"`
	}
	second.callOK(t, "klock_release", map[string]any{"paths": []string{auth, db}}, &rel)
	if len(rel.Released) != 1 || len(rel.NotHeld) != 1 || rel.NotHeld[0] != db {
		t.Fatalf("release = %+v; want %s released and %s not held", rel, auth, db)
	}
	if n, _ := c.ActiveLeaseCount(testCtx(t)); n != 0 {
		t.Fatalf("%d leases active after the release; want 0", n)
	}
}

// TestMCPKill9FreesLeases: the MCP server binds its leases to its own
// process (issue 13 §1, issue 15), so even kill -9, which gives it no chance
// to release them, frees its files at once rather than at the end of their
// 10 minute ttl, and another agent is granted them.
func TestMCPKill9FreesLeases(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "killed.ts")
	first := startMCP(t, d.Socket, "killed-agent")
	second := startMCP(t, d.Socket, "other-agent", "--agent", "other")
	var got mcpAcquireOut
	first.callOK(t, "klock_acquire", map[string]any{"paths": []string{file}, "ttl_seconds": 600}, &got)
	if !got.Granted {
		t.Fatalf("acquire = %+v; want granted", got)
	}
	ls := fileLeases(t, c, file)
	if len(ls) != 1 || ls[0].BoundPID != int32(first.cmd.Process.Pid) {
		t.Fatalf("leases = %+v; want one bound to the MCP server (pid %d)", ls, first.cmd.Process.Pid)
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed MCP server's lease to end with its process", func() bool {
		return len(fileLeases(t, c, file)) == 0
	})
	var granted mcpAcquireOut
	second.callOK(t, "klock_acquire", map[string]any{"paths": []string{file}}, &granted)
	if !granted.Granted {
		t.Fatalf("the other agent's acquire after the kill = %+v; want granted", granted)
	}
}

func TestMCPRenewsLeases(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	m := startMCP(t, d.Socket, "renewer")
	var got mcpAcquireOut
	m.callOK(t, "klock_acquire", map[string]any{"paths": []string{"/renewed/file"}, "ttl_seconds": 2}, &got)
	if !got.Granted {
		t.Fatalf("acquire = %+v", got)
	}
	first := fileLeases(t, c, "/renewed/file")
	if len(first) != 1 {
		t.Fatalf("leases = %+v; want 1", first)
	}
	// Outliving its 2 s ttl a few times over proves it is renewed.
	deadline := time.UnixMilli(first[0].ExpiresAt).Add(3 * time.Second)
	waitFor(t, "the lease to outlive its ttl", func() bool {
		ls := fileLeases(t, c, "/renewed/file")
		if len(ls) != 1 || ls[0].LeaseID != first[0].LeaseID {
			t.Fatalf("lease lost: now %+v", ls)
		}
		return time.Now().After(deadline)
	})
}

func TestMCPBadArguments(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	m := startMCP(t, d.Socket, "careless")
	for _, tc := range []struct {
		tool string
		args map[string]any
		want string // the argument the error must name
	}{
		{"klock_acquire", map[string]any{}, "paths"},
		{"klock_acquire", map[string]any{"paths": "/a"}, "paths"},
		{"klock_acquire", map[string]any{"paths": []string{}}, "paths"},
		{"klock_acquire", map[string]any{"paths": []any{7}}, "paths"},
		{"klock_acquire", map[string]any{"paths": []string{"NOPE:x"}}, "paths"},
		{"klock_acquire", map[string]any{"paths": []string{"/a", "/a"}}, "paths"},
		{"klock_acquire", map[string]any{"paths": []string{"/a"}, "predicate": "WRITES"}, "predicate"},
		{"klock_acquire", map[string]any{"paths": []string{"/a"}, "ttl_seconds": 0}, "ttl_seconds"},
		{"klock_acquire", map[string]any{"paths": []string{"/a"}, "ttl_seconds": "long"}, "ttl_seconds"},
		{"klock_acquire", map[string]any{"paths": []string{"/a"}, "wait_seconds": -1}, "wait_seconds"},
		{"klock_acquire", map[string]any{"paths": []string{"/a"}, "colour": "red"}, "colour"},
		{"klock_release", map[string]any{}, "paths"},
		{"klock_release", map[string]any{"paths": []string{"/a"}, "all": true}, "all"},
		{"klock_release", map[string]any{"lease_ids": "abc"}, "lease_ids"},
		{"klock_release", map[string]any{"all": "yes"}, "all"},
		{"klock_status", map[string]any{"verbose": true}, "verbose"},
		{"klock_why", map[string]any{}, "path"},
		{"klock_why", map[string]any{"path": 3}, "path"},
		{"klock_why", map[string]any{"path": ""}, "path"},
	} {
		r := m.call(t, tc.tool, tc.args)
		t.Logf("%s(%v): %s", tc.tool, tc.args, resultText(r))
		if !r.IsError || !strings.Contains(resultText(r), tc.want) {
			t.Errorf("%s(%v) = error %v %q; want a tool error naming %q", tc.tool, tc.args, r.IsError, resultText(r), tc.want)
		}
	}
	// The server survived all of that.
	var got mcpAcquireOut
	m.callOK(t, "klock_acquire", map[string]any{"paths": []string{"/after/bad/calls"}}, &got)
	if !got.Granted {
		t.Fatalf("acquire after bad calls = %+v; want granted", got)
	}
}

func TestMCPDaemonDown(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "nobody.sock")
	m := startMCP(t, socket, "hopeful")
	for _, tc := range []struct {
		tool string
		args map[string]any
	}{
		{"klock_acquire", map[string]any{"paths": []string{"/a"}}},
		{"klock_status", nil},
		{"klock_why", map[string]any{"path": "/a"}},
	} {
		r := m.call(t, tc.tool, tc.args)
		text := resultText(r)
		t.Logf("%s with klockd down: %s", tc.tool, text)
		if !r.IsError || !strings.Contains(text, "klockd is not running") || !strings.Contains(text, socket) ||
			!strings.Contains(text, "start") {
			t.Errorf("%s with klockd down = error %v %q; want a tool error saying how to start klockd", tc.tool, r.IsError, text)
		}
	}
}

// TestMCPLeaseWithoutTTL: a holder bound to its process without a ttl has
// no expiry; klock_why says so with an empty "until", not a 1970 date.
func TestMCPLeaseWithoutTTL(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	file := filepath.Join(t.TempDir(), "bound.go")
	ctx := testCtx(t)
	if _, err := c.Register(ctx, "holder", nil); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, clientlib.AcquireRequest{AgentID: "holder", SessionID: "s",
		Intents: []clientlib.Intent{{ResourceType: "FILE", ResourcePath: file, Predicate: "MUTATES"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	m := startMCP(t, d.Socket, "asker")
	var why struct {
		Holders []struct {
			Agent string `json:"agent"`
			Since string `json:"since"`
			Until string `json:"until"`
		} `json:"holders"`
	}
	m.callOK(t, "klock_why", map[string]any{"path": file}, &why)
	if len(why.Holders) != 1 || why.Holders[0].Agent != "holder" || why.Holders[0].Since == "" || why.Holders[0].Until != "" {
		t.Fatalf("klock_why holders = %+v; want holder, a since time and no until", why.Holders)
	}
}
