package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// TestWhyShowsWhereHoldersWork: the why table has an AS column with the
// path a holder named (client_path, from a linked git worktree) when any
// holder has one, and no such column otherwise; the hook's and MCP's
// sentences about a holder say it too.
func TestWhyShowsWhereHoldersWork(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	holder := func(agent, clientPath string) protocol.HolderInfo {
		return protocol.HolderInfo{LeaseInfo: protocol.LeaseInfo{AgentID: agent, SessionID: "s", Resource: "FILE:/repo/src/a.go",
			Predicate: "MUTATES", AcquiredAt: now.UnixMilli() - 1000, ExpiresAt: now.UnixMilli() + 60000, Fence: 7, ClientPath: clientPath},
			Priority: 5, Conflicts: true}
	}
	x := &protocol.ExplainResult{Resource: "FILE:/repo/src/a.go", Predicate: "MUTATES", Verdict: "DENY",
		Holders: []protocol.HolderInfo{holder("in-worktree", "/repo-wt/src/a.go"), holder("in-main", "")}}
	var b bytes.Buffer
	if err := formatExplain(&b, x, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	var head, wt, main string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "HOLDER"):
			head = l
		case strings.HasPrefix(l, "in-worktree"):
			wt = l
		case strings.HasPrefix(l, "in-main"):
			main = l
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(head), "AS") || !strings.HasSuffix(strings.TrimSpace(wt), "/repo-wt/src/a.go") ||
		!strings.HasSuffix(strings.TrimSpace(main), "-") {
		t.Fatalf("why table:\n%s\nwant an AS column: the worktree path for in-worktree, - for in-main", b.String())
	}

	x.Holders = x.Holders[1:]
	b.Reset()
	if err := formatExplain(&b, x, now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "AS\n") || strings.Contains(b.String(), " AS ") {
		t.Fatalf("why table without worktree holders:\n%s\nwant no AS column", b.String())
	}

	if s := holderClause(holder("in-worktree", "/repo-wt/src/a.go").LeaseInfo, now); !strings.Contains(s, "holds it, as /repo-wt/src/a.go, for MUTATES") {
		t.Fatalf("holderClause = %q; want the worktree path", s)
	}
}
