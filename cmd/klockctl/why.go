package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// This file holds "klockctl why": the daemon's explain op, as a table and a
// sentence.

func whyCommand() *command {
	var agent, session, predicate string
	return &command{
		name:     "why",
		synopsis: "[--agent A] [--session S] [--predicate P] RESOURCE",
		summary:  "who holds and awaits a resource, and what an acquire would get",
		help: `Explains RESOURCE without acquiring anything: its holders (every active
lease on the resource, with agent, priority, predicate, age and time left,
marked when it conflicts with the request), its queue, and the verdict an
acquire by agent A with predicate P would get now, with the step of the
Wait-Die rule that decided it and one sentence saying why. The daemon decides
it with the same code as a real acquire, and changes nothing.

Holders and queue cover every key overlapping RESOURCE: a folder key above
it (FILE:/src/ covers FILE:/src/a.ts) and, for a folder key ending in /,
every key below it; a last column ON then names each one's key.

Without --agent (and without $KLOCK_AGENT) the verdict is the one a new agent
would get: younger than every registered agent. Without --session it is a
new session of the agent, so its leases in other sessions conflict.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&agent, "agent", "", "explain for agent `ID` (default $KLOCK_AGENT, else a new agent)")
			fs.StringVar(&session, "session", "", "explain for session `ID` of the agent (default: a new session)")
			fs.StringVar(&predicate, "predicate", "MUTATES",
				"the predicate `P` to explain: PROVIDES, CONSUMES, MUTATES, DELETES, DEPENDS_ON or RENAMES")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef("why", "why takes exactly one RESOURCE")
			}
			r, err := parseResource(args[0], a.cwd())
			if err != nil {
				return usagef("why", "%v", err)
			}
			pred, err := parsePredicate(predicate)
			if err != nil {
				return usagef("why", "%v", err)
			}
			req := clientlib.ExplainRequest{
				AgentID: firstSet(agent, a.getenv("KLOCK_AGENT")), SessionID: session,
				ResourceType: r.Type, ResourcePath: r.Path, Predicate: pred,
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				x, err := c.Explain(ctx, req)
				if err != nil {
					return err
				}
				if a.json {
					return writeJSON(a.stdout, toExplainJSON(x))
				}
				return formatExplain(a.stdout, x, a.now())
			})
		},
	}
}

// holderJSON is one holder of explain.
type holderJSON struct {
	protocol.LeaseInfo
	Priority  int64 `json:"priority"`
	Conflicts bool  `json:"conflicts"`
}

// waiterJSON is one queued request (explain's queue, list_waiters).
type waiterJSON struct {
	AgentID   string `json:"agent_id"`
	SessionID string `json:"session_id"`
	Priority  int64  `json:"priority"`
	Resource  string `json:"resource"`
	Predicate string `json:"predicate"`
	Since     int64  `json:"since"`
	Deadline  int64  `json:"deadline"`
	WaitsFor  string `json:"waits_for"`
	Conflicts bool   `json:"conflicts,omitempty"`
}

// explainJSON is explain's result.
type explainJSON struct {
	Resource  string       `json:"resource"`
	Predicate string       `json:"predicate"`
	AgentID   string       `json:"agent_id"`
	Priority  int64        `json:"priority"`
	Holders   []holderJSON `json:"holders"`
	Queue     []waiterJSON `json:"queue"`
	Verdict   string       `json:"verdict"`
	Reason    string       `json:"reason"`
	WaitTime  int64        `json:"wait_time"`
	HeldBy    string       `json:"held_by"`
	Step      string       `json:"step"`
	Message   string       `json:"message"`
	Truncated bool         `json:"truncated"`
}

func toExplainJSON(x *protocol.ExplainResult) explainJSON {
	out := explainJSON{
		Resource: x.Resource, Predicate: x.Predicate, AgentID: x.AgentID, Priority: x.Priority,
		Holders: make([]holderJSON, 0, len(x.Holders)), Queue: make([]waiterJSON, 0, len(x.Queue)),
		Verdict: x.Verdict, Reason: string(x.Reason), WaitTime: x.WaitTime, HeldBy: x.HeldBy,
		Step: x.Step, Message: x.Message, Truncated: x.Truncated,
	}
	for _, h := range x.Holders {
		out.Holders = append(out.Holders, holderJSON{LeaseInfo: h.LeaseInfo, Priority: h.Priority, Conflicts: h.Conflicts})
	}
	for _, w := range x.Queue {
		out.Queue = append(out.Queue, waiterJSON(w))
	}
	return out
}

// formatExplain writes the holders, the queue and the verdict sentence.
func formatExplain(w io.Writer, x *protocol.ExplainResult, now time.Time) error {
	who := "a new agent"
	if x.AgentID != "" {
		who = x.AgentID
	}
	fmt.Fprintf(w, "%s, %s by %s (priority %d)\n\n", cell(x.Resource), x.Predicate, cell(who), x.Priority)
	// With subtree keys, holders and queued requests may be on keys above
	// or below the one explained: then a last column names each one's key.
	elsewhere := false
	for _, h := range x.Holders {
		elsewhere = elsewhere || h.Resource != x.Resource
	}
	for _, q := range x.Queue {
		elsewhere = elsewhere || q.Resource != x.Resource
	}
	on := func(key string) string {
		if !elsewhere {
			return ""
		}
		return "\t" + cell(key)
	}
	onHead := ""
	if elsewhere {
		onHead = "\tON"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(x.Holders) == 0 {
		fmt.Fprintln(tw, "holders: none")
	} else {
		// AS: the path a holder named, when the worktree rule keyed it as
		// another (protocol/README.md "FILE paths"); shown when any has one.
		withPath := slices.ContainsFunc(x.Holders, func(h protocol.HolderInfo) bool { return h.ClientPath != "" })
		head := "HOLDER\tPRIORITY\tPREDICATE\tAGE\tEXPIRES\tCONFLICTS\tSESSION\tFENCE" + onHead
		if withPath {
			head += "\tAS"
		}
		fmt.Fprintln(tw, head)
		for _, h := range x.Holders {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d%s", cell(h.AgentID), h.Priority, h.Predicate,
				roundDuration(now.Sub(time.UnixMilli(h.AcquiredAt))), expiresText(h.ExpiresAt, now),
				yesNo(h.Conflicts), cell(h.SessionID), h.Fence, on(h.Resource))
			if withPath {
				fmt.Fprintf(tw, "\t%s", cell(firstSet(h.ClientPath, "-")))
			}
			fmt.Fprintln(tw)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(x.Queue) == 0 {
		fmt.Fprintln(tw, "queue: empty")
	} else {
		fmt.Fprintln(tw, "QUEUED\tPRIORITY\tPREDICATE\tWAITING\tGIVES UP\tWAITS FOR\tCONFLICTS"+onHead)
		for _, q := range x.Queue {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s%s\n", cell(q.AgentID), q.Priority, q.Predicate,
				roundDuration(now.Sub(time.UnixMilli(q.Since))), untilText(time.UnixMilli(q.Deadline), now),
				cell(q.WaitsFor), yesNo(q.Conflicts), on(q.Resource))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if x.Truncated {
		fmt.Fprintln(w, "(lists cut to fit in one answer)")
	}
	_, err := fmt.Fprintf(w, "\n%s\n(DESIGN.md \"Deciding an acquire\", step %s)\n", oneLine(x.Message), x.Step)
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
