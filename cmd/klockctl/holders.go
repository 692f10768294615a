package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// This file is what the agent-facing commands (mcp, hook, guard) say about
// who holds a resource: they look the holders up, and describe them in one
// sentence a model or a person can act on.

// holdersOf returns the active leases that cover the resource key
// (TYPE:path): on the key itself, or on a subtree above it. It asks the
// daemon's explain op, so the daemon, not this client, decides what covers
// what.
func holdersOf(ctx context.Context, c *clientlib.Client, key string) ([]protocol.LeaseInfo, error) {
	typ, path, _ := strings.Cut(key, ":")
	x, err := c.Explain(ctx, clientlib.ExplainRequest{ResourceType: typ, ResourcePath: path})
	if err != nil {
		return nil, err
	}
	out := make([]protocol.LeaseInfo, len(x.Holders))
	for i, h := range x.Holders {
		out[i] = h.LeaseInfo
	}
	return out, nil
}

// othersOnly keeps the leases held by agents other than agent.
func othersOnly(ls []protocol.LeaseInfo, agent string) []protocol.LeaseInfo {
	var out []protocol.LeaseInfo
	for _, l := range ls {
		if l.AgentID != agent {
			out = append(out, l)
		}
	}
	return out
}

// describeHolders says who holds the leases, in one clause: "claude-code:x
// (session x) holds it for MUTATES since 14:02:11 (3m ago) until 14:32:11
// (in 27m)"; several holders are joined with "; ". heldBy, the agent the
// daemon named when it denied, is said first; it is used alone when the
// leases could not be listed.
func describeHolders(ls []protocol.LeaseInfo, heldBy string, now time.Time) string {
	var parts []string
	seen := false
	for _, l := range ls {
		if l.AgentID == heldBy {
			parts = append([]string{holderClause(l, now)}, parts...)
			seen = true
			continue
		}
		parts = append(parts, holderClause(l, now))
	}
	if !seen && heldBy != "" {
		parts = append([]string{"agent " + heldBy + " holds it or is queued for it"}, parts...)
	}
	if len(parts) == 0 {
		return "nobody holds it now"
	}
	if len(parts) > 3 {
		parts = append(parts[:3], fmt.Sprintf("and %d more", len(parts)-3))
	}
	return strings.Join(parts, "; ")
}

// holderClause describes one lease: who, which session, how, since and
// until when.
func holderClause(l protocol.LeaseInfo, now time.Time) string {
	since := time.UnixMilli(l.AcquiredAt)
	it := "it"
	if strings.HasSuffix(l.Resource, "/") {
		it = l.Resource + " (a subtree that covers it)"
	}
	if l.ClientPath != "" { // named in a linked git worktree
		it += ", as " + oneLine(l.ClientPath) + ","
	}
	s := fmt.Sprintf("agent %s (session %s) holds %s for %s since %s (%s ago)",
		oneLine(l.AgentID), oneLine(l.SessionID), it, l.Predicate,
		clock(since), roundDuration(max(now.Sub(since), 0)))
	if l.ExpiresAt == 0 { // bound to its process, without a ttl
		return s + fmt.Sprintf(" until it releases it or process %d exits", l.BoundPID)
	}
	until := time.UnixMilli(l.ExpiresAt)
	s += fmt.Sprintf(" until %s (%s) unless renewed", clock(until), untilText(until, now))
	if l.BoundPID != 0 {
		s += fmt.Sprintf(", or until process %d exits", l.BoundPID)
	}
	return s
}

// clock formats t as the local time of day, with the date when it is not
// today.
func clock(t time.Time) string {
	now := time.Now()
	if y, m, d := t.Date(); y == now.Year() && m == now.Month() && d == now.Day() {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04:05")
}
