package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/klockd/klock/clientlib"
)

// This file holds the commands that look at the daemon as a whole: status,
// count and evict.

func statusCommand() *command {
	return &command{
		name:     "status",
		synopsis: "[flags]",
		summary:  "show the daemon's version, uptime and counters",
		help: `Says hello to klockd and prints what it answers (server version, protocol,
pid, start time), the socket it talks to and whether that is the system
daemon (/run/klock/klockd.sock) or a per-user one, and its stats: current connections, agents, leases and
waiters; totals of requests, grants, WAIT and DIE denials and expirations
since it started; the last fencing token issued.

Exits 3 when no daemon answers, so "klockctl status" is also a health check.`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("status", "status takes no arguments")
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				h, err := c.Hello(ctx)
				if err != nil {
					return err
				}
				s, err := c.Stats(ctx)
				if err != nil {
					return err
				}
				kind := "per-user"
				if c.SystemDaemon() {
					kind = "system"
				}
				if a.json {
					return writeJSON(a.stdout, statusJSON{Socket: c.Socket(), Daemon: kind, Hello: helloJSON(*h), Stats: statsJSON(*s)})
				}
				return formatStatus(a.stdout, c.Socket(), kind, h, s, a.loc)
			})
		},
	}
}

func countCommand() *command {
	return &command{
		name:     "count",
		synopsis: "[flags]",
		summary:  "print the number of active leases",
		help:     `Prints how many leases are active (active_lease_count). Expired leases are never counted.`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("count", "count takes no arguments")
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				n, err := c.ActiveLeaseCount(ctx)
				if err != nil {
					return err
				}
				return a.writeAnswer("count", n, strconv.Itoa(n))
			})
		},
	}
}

func evictCommand() *command {
	return &command{
		name:     "evict",
		synopsis: "[flags]",
		summary:  "remove expired leases now",
		help: `Asks the daemon to remove expired leases now (evict_expired) and prints how
many it removed. The daemon expires leases on time by itself, so this is
usually 0; it exists for parity with the SDK's evict_expired.`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("evict", "evict takes no arguments")
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				n, err := c.EvictExpired(ctx)
				if err != nil {
					return err
				}
				return a.writeAnswer("evicted", n, fmt.Sprintf("evicted %d expired lease%s", n, plural(n)))
			})
		},
	}
}

// plural returns "s" unless n is 1.
func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
