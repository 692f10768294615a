package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klockd/klock/protocol"
)

// The --json output of every command mirrors the protocol's result maps
// (protocol/README.md): the same snake_case keys, times as Unix milliseconds and
// durations as milliseconds, so a script reads the same shapes whether it
// talks to the socket or runs klockctl. The types below carry the json tags;
// of the protocol types only LeaseInfo and AgentInfo (which the dashboard
// serves too) carry json tags of their own, and are used as they are.

// grantJSON is one granted lease (acquire's result, an element of
// acquire_many's leases).
type grantJSON struct {
	Success    bool   `json:"success"`
	LeaseID    string `json:"lease_id"`
	AgentID    string `json:"agent_id"`
	SessionID  string `json:"session_id"`
	Resource   string `json:"resource"`
	Predicate  string `json:"predicate"`
	AcquiredAt int64  `json:"acquired_at"`
	ExpiresAt  int64  `json:"expires_at"`
	Fence      uint64 `json:"fence"`
	BoundPID   int32  `json:"bound_pid,omitempty"`
}

// manyGrantJSON is acquire_many's result on grant.
type manyGrantJSON struct {
	Success bool        `json:"success"`
	Leases  []grantJSON `json:"leases"`
}

// denialJSON is the result of a denied acquire or acquire_many.
type denialJSON struct {
	Success  bool   `json:"success"`
	Reason   string `json:"reason"`
	WaitTime int64  `json:"wait_time"`
	HeldBy   string `json:"held_by"`
	Message  string `json:"message"`
	HeldPath string `json:"held_path,omitempty"`
}

// leasesJSON is list_leases' result.
type leasesJSON struct {
	Leases    []protocol.LeaseInfo `json:"leases"`
	Truncated bool                 `json:"truncated"`
	Next      string               `json:"next,omitempty"` // where the rest starts, when --limit cut it
}

// agentsJSON is list_agents' result.
type agentsJSON struct {
	Agents    []protocol.AgentInfo `json:"agents"`
	Truncated bool                 `json:"truncated"`
	Next      string               `json:"next,omitempty"` // where the rest starts, when --limit cut it
}

// helloJSON is hello's result.
type helloJSON struct {
	Server    string `json:"server"`
	Protocol  int    `json:"protocol"`
	PID       int    `json:"pid"`
	MaxFrame  int    `json:"max_frame"`
	StartedAt int64  `json:"started_at"`
}

// statsJSON is stats' result.
type statsJSON struct {
	UptimeMS    int64  `json:"uptime_ms"`
	Connections int    `json:"connections"`
	Agents      int    `json:"agents"`
	Leases      int    `json:"leases"`
	Waiters     int    `json:"waiters"`
	Ops         uint64 `json:"ops"`
	Grants      uint64 `json:"grants"`
	Waits       uint64 `json:"waits"`
	Dies        uint64 `json:"dies"`
	Expirations uint64 `json:"expirations"`
	Fence       uint64 `json:"fence"`
	// Degraded: state changes are refused (UNAVAILABLE) since
	// DegradedSince (Unix ms), for DegradedReason.
	Degraded       bool   `json:"degraded"`
	DegradedSince  int64  `json:"degraded_since"`
	DegradedReason string `json:"degraded_reason"`

	BoundProcesses int    `json:"bound_processes"`
	Pidfds         int    `json:"pidfds"`
	ExitReleases   uint64 `json:"exit_releases"`
	Goroutines     int    `json:"goroutines"`
	// Cluster is set in cluster mode.
	Cluster *protocol.ClusterStats `json:"cluster,omitempty"`
}

// statusJSON is the status command's output: where it connected, hello and
// stats.
type statusJSON struct {
	Socket string    `json:"socket"`
	Daemon string    `json:"daemon"` // "system" or "per-user"
	Hello  helloJSON `json:"hello"`
	Stats  statsJSON `json:"stats"`
}

// registerJSON is register_agent's result.
type registerJSON struct {
	AgentID      string `json:"agent_id"`
	Priority     int64  `json:"priority"`
	RegisteredAt int64  `json:"registered_at"`
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeAnswer writes a command's one-value answer: {key: value} as JSON
// with --json, else text as a line.
func (a *app) writeAnswer(key string, value any, text string) error {
	if a.json {
		return writeJSON(a.stdout, map[string]any{key: value})
	}
	_, err := fmt.Fprintln(a.stdout, text)
	return err
}

// toLeasesJSON and toAgentsJSON give an empty list as [], never null.
func toLeasesJSON(ls []protocol.LeaseInfo, next string) leasesJSON {
	if ls == nil {
		ls = []protocol.LeaseInfo{}
	}
	return leasesJSON{Leases: ls, Truncated: next != "", Next: next}
}

func toAgentsJSON(as []protocol.AgentInfo, next string) agentsJSON {
	if as == nil {
		as = []protocol.AgentInfo{}
	}
	return agentsJSON{Agents: as, Truncated: next != "", Next: next}
}

// formatLeases writes leases as an aligned table, one row per lease, and a
// last line when the daemon cut the list short.
func formatLeases(w io.Writer, ls []protocol.LeaseInfo, truncated bool, now time.Time) error {
	if len(ls) == 0 {
		_, err := fmt.Fprintln(w, "no active leases")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tPREDICATE\tAGENT\tSESSION\tFENCE\tEXPIRES\tOWNER\tBOUND TO\tLEASE")
	for _, l := range ls {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
			cell(resourceText(l.Resource, l.ClientPath)), l.Predicate, cell(l.AgentID), cell(l.SessionID), l.Fence,
			expiresText(l.ExpiresAt, now), ownerText(l.OwnerUID, l.OwnerPID), boundText(l.BoundPID), l.LeaseID)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if truncated {
		_, err := fmt.Fprintf(w, "(first %d shown, as --limit asks; more match)\n", len(ls))
		return err
	}
	return nil
}

// resourceText is a resource key followed, when the holder named the file
// by another path (in a linked git worktree), by that path.
func resourceText(key, clientPath string) string {
	if clientPath == "" {
		return key
	}
	return key + " (as " + clientPath + ")"
}

// formatAgents writes agents as an aligned table in the daemon's order
// (priority: oldest first).
func formatAgents(w io.Writer, as []protocol.AgentInfo, truncated bool, loc *time.Location) error {
	if len(as) == 0 {
		_, err := fmt.Fprintln(w, "no registered agents")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tPRIORITY\tREGISTERED\tLEASES\tWAITING")
	for _, a := range as {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\n", cell(a.AgentID), a.Priority,
			clockText(time.UnixMilli(a.RegisteredAt), loc), a.Leases, a.Waiting)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if truncated {
		_, err := fmt.Fprintf(w, "(first %d shown, as --limit asks; more are registered)\n", len(as))
		return err
	}
	return nil
}

// formatStatus writes hello and stats as aligned "name  value" lines.
func formatStatus(w io.Writer, socket, kind string, h *protocol.HelloResult, s *protocol.StatsResult, loc *time.Location) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "daemon\t%s (protocol %d, pid %d)\n", h.Server, h.Protocol, h.PID)
	fmt.Fprintf(tw, "socket\t%s (%s daemon)\n", socket, kind)
	fmt.Fprintf(tw, "started\t%s (up %s)\n", clockText(time.UnixMilli(h.StartedAt), loc),
		roundDuration(time.Duration(s.UptimeMS)*time.Millisecond))
	fmt.Fprintf(tw, "connections\t%d\n", s.Connections)
	fmt.Fprintf(tw, "agents\t%d\n", s.Agents)
	fmt.Fprintf(tw, "leases\t%d\n", s.Leases)
	fmt.Fprintf(tw, "waiters\t%d\n", s.Waiters)
	fmt.Fprintf(tw, "ops\t%d\n", s.Ops)
	fmt.Fprintf(tw, "grants\t%d\n", s.Grants)
	fmt.Fprintf(tw, "denials\t%d wait, %d die\n", s.Waits, s.Dies)
	fmt.Fprintf(tw, "expirations\t%d\n", s.Expirations)
	fmt.Fprintf(tw, "fence\t%d\n", s.Fence)
	fmt.Fprintf(tw, "bound\t%d processes (%d pidfds); %d leases ended with their process\n",
		s.BoundProcesses, s.Pidfds, s.ExitReleases)
	if s.Degraded {
		fmt.Fprintf(tw, "state\tDEGRADED since %s: changes are refused (UNAVAILABLE), reads are served; %s\n",
			clockText(time.UnixMilli(s.DegradedSince), loc), oneLine(s.DegradedReason))
	} else {
		fmt.Fprintf(tw, "state\tok\n")
	}
	if c := s.Cluster; c != nil {
		role := "follower"
		if c.Leader {
			role = "leader"
		}
		fmt.Fprintf(tw, "cluster\tnode %s (%s), etcd revision %d\n", oneLine(c.Node), role, c.Revision)
		if c.EtcdOK {
			fmt.Fprintf(tw, "etcd\tquorum reachable since %s\n", clockText(time.UnixMilli(c.Since), loc))
		} else {
			fmt.Fprintf(tw, "etcd\tNO QUORUM since %s: %s (changes and reads get UNAVAILABLE)\n", clockText(time.UnixMilli(c.Since), loc), oneLine(c.Error))
		}
	}
	return tw.Flush()
}

// formatGrants writes granted leases one per line: the lease id first, so
// that `klockctl acquire X | cut -d' ' -f1` is the id, then what it covers.
func formatGrants(w io.Writer, gs []grantJSON, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, g := range gs {
		fmt.Fprintf(tw, "%s\t%s\t%s\tfence %d\texpires %s\n", g.LeaseID, cell(g.Resource), g.Predicate,
			g.Fence, expiresText(g.ExpiresAt, now))
	}
	return tw.Flush()
}

// denialText is the one-line explanation of a denial.
func denialText(d denialJSON) string {
	var b strings.Builder
	fmt.Fprintf(&b, "denied: %s", d.Reason)
	switch {
	case d.HeldBy != "" && d.HeldPath != "":
		fmt.Fprintf(&b, " (held by %s, as %s)", oneLine(d.HeldBy), oneLine(d.HeldPath))
	case d.HeldBy != "":
		fmt.Fprintf(&b, " (held by %s)", oneLine(d.HeldBy))
	}
	if d.Message != "" {
		fmt.Fprintf(&b, ": %s", oneLine(d.Message))
	}
	if d.WaitTime > 0 && (d.Reason == string(protocol.ReasonDie) || d.Reason == string(protocol.ReasonWait)) {
		fmt.Fprintf(&b, "; retry in %s or use --wait", roundDuration(time.Duration(d.WaitTime)*time.Millisecond))
	}
	return b.String()
}

// untilText says how long until t, as "in 29s", or "expired".
// expiresText is untilText for a wire expires_at, which is 0 for a lease
// without a ttl.
func expiresText(ms int64, now time.Time) string {
	if ms == 0 {
		return "no ttl"
	}
	return untilText(time.UnixMilli(ms), now)
}

// boundText shows the process a lease is bound to: its pid and, when this
// machine's /proc has it, its name; "-" for an unbound lease. The name is
// read here, so it is right when klockctl shares klockd's pid namespace
// (the usual case); elsewhere it may be missing.
func boundText(pid int32) string {
	if pid == 0 {
		return "-"
	}
	name, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/comm")
	if err != nil {
		return strconv.Itoa(int(pid))
	}
	return strconv.Itoa(int(pid)) + " (" + oneLine(strings.TrimSpace(string(name))) + ")"
}

func untilText(t, now time.Time) string {
	d := t.Sub(now)
	if d <= 0 {
		return "expired"
	}
	return "in " + roundDuration(d).String()
}

// roundDuration rounds d for people: to the millisecond under a second, to
// the tenth of a second under a minute, to the second above.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond)
	default:
		return d.Round(time.Second)
	}
}

// clockText formats t to the second in loc.
func clockText(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("2006-01-02 15:04:05")
}

// ownerText names the process that took a lease.
func ownerText(uid uint32, pid int32) string {
	return fmt.Sprintf("uid=%d,pid=%d", uid, pid)
}

// cell makes s safe for one table cell: no tabs or line breaks, which would
// break the alignment, and never empty.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return oneLine(s)
}

// oneLine replaces control characters with spaces, so that text from the
// daemon cannot break a line-oriented output.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
