package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// This file holds the agents command and its register and unregister
// subcommands.

func agentsCommand() *command {
	var limit int
	var priority string
	return &command{
		name:     "agents",
		synopsis: "[flags] | agents register [--priority N] ID | agents unregister ID",
		summary:  "list, register or unregister agents",
		help: `Without arguments, lists registered agents by priority (lower = older =
wins under Wait-Die) with their registration time and how many leases they
hold and wait for: all of them, a page of 1000 at a time, or the first
--limit.

"agents register ID" registers an agent; without --priority the daemon
assigns the registration time in ms, so agents registered later are
junior. Registering an existing agent again is a no-op that prints its
current registration; with a different --priority it is refused while the
agent holds or waits for a lease.

"agents unregister ID" removes an agent that holds and waits for nothing.`,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&limit, "limit", 0, "list at most `N` agents (0: all of them)")
			fs.StringVar(&priority, "priority", "", "with register: the agent's priority `N` (lower wins; default: the registration time in ms)")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) == 0 {
				if priority != "" {
					return usagef("agents", "--priority goes with \"agents register ID\"")
				}
				return a.listAgents(limit)
			}
			switch args[0] {
			case "register":
				if len(args) != 2 {
					return usagef("agents", "want \"agents register ID\"")
				}
				p, err := parsePriority("agents", priority)
				if err != nil {
					return err
				}
				return a.registerAgent(args[1], p)
			case "unregister":
				if len(args) != 2 {
					return usagef("agents", "want \"agents unregister ID\"")
				}
				return a.unregisterAgent(args[1])
			}
			return usagef("agents", "unknown agents subcommand %q; want register or unregister", args[0])
		},
	}
}

func (a *app) listAgents(limit int) error {
	if limit < 0 {
		return usagef("agents", "--limit must be >= 0")
	}
	return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
		var as []protocol.AgentInfo
		next := ""
		for {
			page := engineListPage
			if limit > 0 {
				page = min(limit-len(as), engineListPage)
			}
			got, n, err := c.ListAgentsPage(ctx, page, next)
			if err != nil {
				return err
			}
			as, next = append(as, got...), n
			if next == "" || limit > 0 && len(as) >= limit {
				break
			}
		}
		if a.json {
			return writeJSON(a.stdout, toAgentsJSON(as, next))
		}
		return formatAgents(a.stdout, as, next != "", a.loc)
	})
}

func (a *app) registerAgent(id string, priority *int64) error {
	return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
		r, err := c.Register(ctx, id, priority)
		if err != nil {
			return err
		}
		if a.json {
			return writeJSON(a.stdout, registerJSON(*r))
		}
		_, err = fmt.Fprintf(a.stdout, "agent %s registered: priority %d, since %s\n",
			oneLine(r.AgentID), r.Priority, clockText(time.UnixMilli(r.RegisteredAt), a.loc))
		return err
	})
}

func (a *app) unregisterAgent(id string) error {
	return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
		ok, err := c.UnregisterAgent(ctx, id)
		if err != nil {
			return err
		}
		text := "agent " + oneLine(id) + " was not registered"
		if ok {
			text = "agent " + oneLine(id) + " unregistered"
		}
		return a.writeAnswer("unregistered", ok, text)
	})
}

// parsePriority parses a --priority flag of command cmd: nil when it is
// empty (the daemon assigns one), else an integer >= 0.
func parsePriority(cmd, s string) (*int64, error) {
	if s == "" {
		return nil, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return nil, usagef(cmd, "--priority must be an integer >= 0, got %q", s)
	}
	return &v, nil
}
