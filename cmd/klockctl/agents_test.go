package main

import (
	"os"
	"strconv"
	"testing"
)

func TestAgentNameFor(t *testing.T) {
	pid := "-" + strconv.Itoa(os.Getpid())
	for _, tc := range []struct{ client, want string }{
		{"claude-code", "claude-code"},
		{"Claude Code", "claude-code"},
		{"cursor/1.2 (beta)", "cursor-1.2-beta"},
		{"", "mcp"},
		{"日本", "mcp"},
	} {
		if got := agentNameFor(tc.client); got != tc.want+pid {
			t.Errorf("agentNameFor(%q) = %q; want %q", tc.client, got, tc.want+pid)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/usr/local/bin/klockctl", "/usr/local/bin/klockctl"},
		{"/home/a b/klockctl", "'/home/a b/klockctl'"},
		{"/it's/klockctl", `'/it'\''s/klockctl'`},
		{"/x/$HOME", "'/x/$HOME'"},
	} {
		if got := shellQuote(tc.in); got != tc.want {
			t.Errorf("shellQuote(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestIsKlockHook(t *testing.T) {
	for _, tc := range []struct {
		h    any
		want bool
	}{
		{map[string]any{"type": "command", "command": "/usr/bin/klockctl hook claude-code"}, true},
		{map[string]any{"type": "command", "command": "'/a b/klockctl' hook claude-code"}, true},
		{map[string]any{"type": "command", "command": "/usr/bin/lint hook claude-code"}, false},
		{map[string]any{"type": "command", "command": "/usr/bin/klockctl guard"}, false},
		{"klockctl hook claude-code", false},
	} {
		if got := isKlockHook(tc.h); got != tc.want {
			t.Errorf("isKlockHook(%v) = %v; want %v", tc.h, got, tc.want)
		}
	}
}
