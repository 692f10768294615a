package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/klockd/klock/clientlib"
)

// This file holds the operator commands: revoke, freeze and thaw. The daemon
// allows them to root and to its own uid only.

func revokeCommand() *command {
	return &command{
		name:     "revoke",
		synopsis: "[flags] LEASE_ID",
		summary:  "end someone's lease now (admin)",
		help: `Ends the lease now, as if it had expired; waiters on the resource are
served. Prints whether the lease was active. Needs root or the daemon's uid.`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef("revoke", "want exactly one LEASE_ID")
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				ok, err := c.Revoke(ctx, args[0])
				if err != nil {
					return err
				}
				text := oneLine(args[0]) + " was not active"
				if ok {
					text = "revoked " + args[0]
				}
				return a.writeAnswer("revoked", ok, text)
			})
		},
	}
}

func freezeCommand() *command {
	return freezeThawCommand("freeze", `Freezes the resource: every acquire on it is denied with RESOURCE_LOCKED,
and requests queued on it are answered so, until "klockctl thaw". Leases
already held keep running. Needs root or the daemon's uid.`)
}

func thawCommand() *command {
	return freezeThawCommand("thaw", `Thaws a resource frozen with "klockctl freeze": acquires on it are decided
normally again. Needs root or the daemon's uid.`)
}

// freezeThawCommand builds freeze or thaw, which differ only in the call.
func freezeThawCommand(name, help string) *command {
	summary := "deny every acquire on a resource (admin)"
	if name == "thaw" {
		summary = "undo freeze (admin)"
	}
	return &command{
		name:     name,
		synopsis: "[flags] RESOURCE",
		summary:  summary,
		help: help + `

RESOURCE is TYPE:path, or a bare path for a FILE (made absolute).`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef(name, "want exactly one RESOURCE")
			}
			r, err := parseResource(args[0], a.cwd())
			if err != nil {
				return usagef(name, "%v", err)
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				call := c.Freeze
				if name == "thaw" {
					call = c.Thaw
				}
				frozen, err := call(ctx, r.Type, r.Path)
				if err != nil {
					return err
				}
				if a.json {
					return writeJSON(a.stdout, struct {
						Resource string `json:"resource"`
						Frozen   bool   `json:"frozen"`
					}{r.Key(), frozen})
				}
				state := "thawed"
				if frozen {
					state = "frozen"
				}
				_, err = fmt.Fprintf(a.stdout, "%s %s\n", oneLine(r.Key()), state)
				return err
			})
		},
	}
}
