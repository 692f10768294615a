package tests

import (
	"strings"
	"testing"

	"github.com/klockd/klock/tests/harness"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestMCPSaysWhichAgentItActsAs: at its first tool call the MCP server
// registers its agent and says, on stderr (the server's log, which MCP
// clients keep), which agent it acts as, with what priority, and where the
// priority came from (protocol/README.md "Unregistered agents").
func TestMCPSaysWhichAgentItActsAs(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--agent", "planner"}, []string{"klockctl mcp: acting as agent planner, priority ",
			"klockd's registration time", "klockctl agents register planner --priority N"}},
		{[]string{"--agent", "senior", "--priority", "7"}, []string{"klockctl mcp: acting as agent senior, priority 7, given by --priority"}},
	} {
		var stderr harness.Buffer
		cmd := kcCommand(t, d, nil, append([]string{"mcp"}, tc.args...)...)
		cmd.Stderr = &stderr
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "logged", Version: "1.0"}, nil).
			Connect(testCtx(t), &mcp.CommandTransport{Command: cmd}, nil)
		if err != nil {
			t.Fatal(err)
		}
		m := &mcpAgent{cs: cs, cmd: cmd}
		var got mcpAcquireOut
		m.callOK(t, "klock_acquire", map[string]any{"paths": []string{"/repo/" + tc.args[1] + ".go"}}, &got)
		if err := cs.Close(); err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("klockctl mcp %v: stderr %q; want it to say %q", tc.args, stderr.String(), w)
			}
		}
	}
}
