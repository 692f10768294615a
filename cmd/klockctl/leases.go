package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// This file holds the commands on single leases: leases (list), acquire,
// release, heartbeat and end-session.

func leasesCommand() *command {
	var agent, prefix string
	var limit int
	return &command{
		name:     "leases",
		synopsis: "[flags]",
		summary:  "list active leases as a table",
		help: `Lists active leases, sorted by resource then fence, as an aligned table:
resource, predicate, agent, session, fencing token, time left ("no ttl" for
a lease bound to its process without one), the uid and pid that took it,
the pid and name of the process it is bound to ("-" when it is not bound;
klockd ends it when that process exits), and the lease id. It pages through
all of them (1000 a request), or the first --limit; a lease granted or
released while it pages may be listed or not, and none is listed twice.

--prefix matches the start of the resource key (FILE:/src/, SYMBOL:auth.).
A prefix without a TYPE: is a FILE path, resolved like a FILE resource
(made absolute, cleaned, mapped out of a linked git worktree): --prefix src/
in /repo lists FILE:/repo/src/....`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&agent, "agent", "", "only leases held by agent `ID`")
			fs.StringVar(&prefix, "prefix", "", "only resources whose key starts with `PREFIX`")
			fs.IntVar(&limit, "limit", 0, "show at most `N` leases (0: all of them)")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("leases", "leases takes no arguments, only flags")
			}
			if limit < 0 {
				return usagef("leases", "--limit must be >= 0")
			}
			if prefix != "" {
				r, err := parseResource(prefix, a.cwd())
				if err != nil {
					return usagef("leases", "--prefix: %v", err)
				}
				prefix = r.Key()
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				ls, next, err := pageLeases(ctx, c, clientlib.LeaseFilter{AgentID: agent, Prefix: prefix}, limit)
				if err != nil {
					return err
				}
				if a.json {
					return writeJSON(a.stdout, toLeasesJSON(ls, next))
				}
				return formatLeases(a.stdout, ls, next != "", a.now())
			})
		},
	}
}

// pageLeases collects the leases matching f, a page at a time, up to limit
// (0: all), and returns where the rest starts when there is more.
func pageLeases(ctx context.Context, c *clientlib.Client, f clientlib.LeaseFilter, limit int) ([]protocol.LeaseInfo, string, error) {
	var out []protocol.LeaseInfo
	for {
		f.Limit = 0
		if limit > 0 {
			f.Limit = min(limit-len(out), engineListPage)
		}
		ls, next, err := c.ListLeasesPage(ctx, f)
		if err != nil {
			return nil, "", err
		}
		out = append(out, ls...)
		if next == "" || limit > 0 && len(out) >= limit {
			return out, next, nil
		}
		f.After = next
	}
}

// engineListPage is the most entries klockctl asks for in one page: the
// daemon's default page.
const engineListPage = 1000

// holderFlags are the flags naming who takes a lease, shared by acquire and run.
type holderFlags struct {
	agent, session, predicate string
	ttl                       *time.Duration
}

// define defines --agent, --session, --predicate and --ttl on fs; the
// callers define --wait (waitFlag) with their own default.
func (h *holderFlags) define(fs *flag.FlagSet, agentHelp, sessionHelp string, ttl time.Duration) {
	fs.StringVar(&h.agent, "agent", "", agentHelp)
	fs.StringVar(&h.session, "session", "", sessionHelp)
	fs.StringVar(&h.predicate, "predicate", "MUTATES",
		"how the command uses the resources: `P` is PROVIDES, CONSUMES, MUTATES, DELETES, DEPENDS_ON or RENAMES")
	h.ttl = durationFlag(fs, "ttl", ttl, "lease lifetime, renewed by heartbeats (Go duration, or seconds)")
}

// intents parses resources and the predicate into acquire intents.
func (h *holderFlags) intents(cmd string, args []string, cwd string) ([]clientlib.Intent, error) {
	pred, err := parsePredicate(h.predicate)
	if err != nil {
		return nil, usagef(cmd, "%v", err)
	}
	rs, err := parseResources(args, cwd)
	if err != nil {
		return nil, usagef(cmd, "%v", err)
	}
	if len(rs) > protocol.MaxIntents {
		return nil, usagef(cmd, "at most %d resources at once, got %d", protocol.MaxIntents, len(rs))
	}
	if *h.ttl < time.Millisecond {
		return nil, usagef(cmd, "--ttl must be at least 1ms")
	}
	out := make([]clientlib.Intent, len(rs))
	for i, r := range rs {
		out[i] = clientlib.Intent{ResourceType: r.Type, ResourcePath: r.Path, Predicate: pred, ClientPath: r.ClientPath}
	}
	return out, nil
}

// userName names the user running klockctl, for default agent ids.
func (a *app) userName() string {
	if u := a.getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "uid" + strconv.Itoa(os.Getuid())
}

func acquireCommand() *command {
	var h holderFlags
	var wait *time.Duration
	var idem string
	var quiet bool
	return &command{
		name:     "acquire",
		synopsis: "[flags] RESOURCE...",
		summary:  "take leases and print them (they outlive klockctl)",
		help: `Takes a lease on each RESOURCE and prints it: lease id, resource, predicate,
fencing token and time left. Several resources are taken atomically
(acquire_many): all or none. The leases are NOT kept alive, and not bound
to klockctl's process (bind "none"), so they outlive it: they expire after
--ttl unless renewed with "klockctl heartbeat" or ended with "klockctl
release" (use "klockctl run" to hold leases for a command, bound to it).

A RESOURCE is TYPE:path with TYPE one of FILE, SYMBOL, API_ENDPOINT,
DATABASE_TABLE, CONFIG_KEY (any case); a bare path is a FILE. A FILE path is
made absolute against the current directory and cleaned, and inside a
linked git worktree it is keyed as the same path in the main worktree
(KLOCK_WORKTREES=separate: keep worktrees apart).

A RESOURCE ending in '/' is a subtree: "klockctl acquire src/" takes the
whole folder; it conflicts with leases on any path under it, and with
subtree leases on the folders above it. A bare directory without the
slash, "src", stays one plain key that covers nothing else.

An agent that is not registered is registered first, without a priority:
klockd gives it its registration time, so it yields to every agent
registered before it; klockctl says so on stderr. A registered agent is
left as it is. --wait 0 (the default) answers at once; --wait D waits up
to D (a WAIT is queued in the daemon, a DIE is asked again after the
suggested delay); --wait forever has no limit. A denial prints one line on
stderr (the denial map with --json, on stdout) and exits 1.`,
		flags: func(fs *flag.FlagSet) {
			h.define(fs,
				"take the leases as agent `ID` (default $KLOCK_AGENT, else klockctl-$USER)",
				"in session `ID`: same agent and session is re-entrant (default $KLOCK_SESSION, else klockctl)",
				time.Minute)
			wait = waitFlag(fs, 0)
			fs.StringVar(&idem, "idem", "", "idempotency `KEY`: while its leases are active, the same agent and key get them back")
			fs.BoolVar(&quiet, "q", false, "print only the lease ids, one per line")
		},
		run: func(a *app, fs *flag.FlagSet, args []string) error {
			if err := h.checkAgent("acquire", fs); err != nil {
				return err
			}
			intents, err := h.intents("acquire", args, a.cwd())
			if err != nil {
				return err
			}
			agent := firstSet(h.agent, a.getenv("KLOCK_AGENT"), "klockctl-"+a.userName())
			session := firstSet(h.session, a.getenv("KLOCK_SESSION"), "klockctl")
			ctx, cancel := waitContext(context.Background(), requestTimeout, *wait)
			defer cancel()
			c, err := a.dial(ctx, *wait != 0)
			if err != nil {
				return err
			}
			defer c.Close()
			actx, cancelWait := waitContext(ctx, 0, *wait)
			defer cancelWait()
			// Not bound: the lease must outlive this short-lived command.
			req := clientlib.AcquireRequest{AgentID: agent, SessionID: session, Intents: intents, TTL: *h.ttl,
				Idem: idem, NoWait: *wait == 0, Bind: clientlib.BindNone}
			var leases []clientlib.AcquireResult // not kept alive: they live by their ttl
			notice, err := acquireRegistering(actx, c, agent, func() (err error) {
				leases, err = c.AcquireGrants(actx, req)
				return err
			})
			a.sayRegistered(notice)
			if err != nil {
				return a.acquireFailure(err, actx, *wait)
			}
			grants := make([]grantJSON, len(leases))
			for i := range leases {
				grants[i] = toGrantJSON(&leases[i])
			}
			switch {
			case a.json && len(grants) == 1:
				return writeJSON(a.stdout, grants[0])
			case a.json:
				return writeJSON(a.stdout, manyGrantJSON{Success: true, Leases: grants})
			case quiet:
				for _, g := range grants {
					fmt.Fprintln(a.stdout, g.LeaseID)
				}
				return nil
			}
			return formatGrants(a.stdout, grants, a.now())
		},
	}
}

// checkAgent refuses an --agent given empty: it would otherwise fall back
// to $KLOCK_AGENT or the default agent without a word.
func (h *holderFlags) checkAgent(cmd string, fs *flag.FlagSet) error {
	if h.agent == "" && flagGiven(fs, "agent") {
		return usagef(cmd, "--agent is empty; name the agent, or leave the flag out for the default")
	}
	return nil
}

// waitContext bounds ctx by extra plus wait: with wait 0 by extra alone
// (0: not at all), with waitForever not at all.
func waitContext(ctx context.Context, extra, wait time.Duration) (context.Context, context.CancelFunc) {
	switch {
	case wait < 0, wait == 0 && extra == 0:
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, extra+wait)
}

// acquireRegistering runs acquire, and when klockd does not know agent,
// registers it without a priority (klockd gives it its registration time,
// so it yields to every agent registered before it) and runs acquire again:
// the rule of protocol/README.md "Unregistered agents" for tools. A
// registered agent is never registered again. notice, set when it
// registered the agent, says so, for the tool to show where its user (or
// agent) reads it.
func acquireRegistering(ctx context.Context, c *clientlib.Client, agent string, acquire func() error) (notice string, err error) {
	err = acquire()
	if !errors.Is(err, clientlib.ErrUnknownAgent) {
		return "", err
	}
	r, err := c.Register(ctx, agent, nil)
	if err != nil {
		return "", err
	}
	notice = fmt.Sprintf("registered agent %s with priority %d, its registration time: it yields to every agent "+
		"registered before it (to choose: klockctl agents register %s --priority N)", oneLine(r.AgentID), r.Priority, oneLine(r.AgentID))
	return notice, acquire()
}

// sayRegistered prints acquireRegistering's notice, if any, on stderr.
func (a *app) sayRegistered(notice string) {
	if notice != "" {
		fmt.Fprintln(a.stderr, "klockctl: "+notice)
	}
}

// acquireFailure reports why an acquire with --wait did not end in a grant:
// a denial (one line on stderr, its map on stdout with --json, exit 1),
// else the error.
func (a *app) acquireFailure(err error, ctx context.Context, wait time.Duration) error {
	var de *clientlib.DenialError
	if !errors.As(err, &de) {
		if wait > 0 && ctx.Err() != nil {
			return fmt.Errorf("not granted within %s: %v", wait, err)
		}
		return err
	}
	d := denialOf(de)
	if wait > 0 && ctx.Err() != nil {
		return a.reportDenialLine(d, fmt.Sprintf("not granted within %s: ", wait))
	}
	return a.reportDenial(d)
}

// denialOf is a blocking acquire's denial in the protocol's shape.
func denialOf(de *clientlib.DenialError) denialJSON {
	return denialJSON{Reason: de.Reason, WaitTime: de.WaitTime.Milliseconds(), HeldBy: de.HeldBy, HeldPath: de.HeldPath, Message: de.Message}
}

// reportDenial prints a denial (as JSON on stdout with --json) and returns
// the error that makes klockctl exit 1 with the denial's line on stderr.
func (a *app) reportDenial(d denialJSON) error {
	if a.json {
		if err := writeJSON(a.stdout, d); err != nil {
			return err
		}
	}
	return &exitStatus{code: exitFailed, msg: denialText(d)}
}

// toGrantJSON converts clientlib's grant to the protocol's shape.
func toGrantJSON(r *clientlib.AcquireResult) grantJSON {
	return grantJSON{
		Success: true, LeaseID: r.LeaseID, AgentID: r.AgentID, SessionID: r.SessionID,
		Resource: r.Resource, Predicate: r.Predicate,
		AcquiredAt: r.AcquiredAt.UnixMilli(), ExpiresAt: unixMilli(r.ExpiresAt), Fence: r.Fence,
		BoundPID: int32(r.BoundPID),
	}
}

// unixMilli is t in Unix ms, 0 for the zero time (no expiry).
func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// firstSet returns the first non-empty string.
func firstSet(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

func releaseCommand() *command {
	return &command{
		name:     "release",
		synopsis: "[flags] LEASE_ID",
		summary:  "end a lease",
		help: `Releases the lease. A lease that is not active (unknown, already released,
expired) is left alone, but klockctl says so on stderr ({"released": false}
on stdout with --json) and exits 1, so that a script notices a mistyped
id. Only the uid that took the lease, or root, may release it.`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef("release", "want exactly one LEASE_ID")
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				ok, err := c.ReleaseLease(ctx, args[0])
				if err != nil {
					return err
				}
				if ok {
					return a.writeAnswer("released", ok, "released "+args[0])
				}
				if a.json {
					if err := writeJSON(a.stdout, map[string]any{"released": false}); err != nil {
						return err
					}
				}
				return &exitStatus{code: exitFailed, msg: oneLine(args[0]) + " was not active (unknown, released or expired)"}
			})
		},
	}
}

func heartbeatCommand() *command {
	var ttl *time.Duration
	return &command{
		name:     "heartbeat",
		synopsis: "[flags] LEASE_ID",
		summary:  "extend a lease",
		help: `Extends the lease to now + its ttl, or now + --ttl, which then becomes its
ttl. Fails (exit 1) when the lease is no longer active: it expired or was
released, and another agent may hold the resource now.`,
		flags: func(fs *flag.FlagSet) {
			ttl = durationFlag(fs, "ttl", 0, "new lease lifetime (0: keep the lease's ttl)")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef("heartbeat", "want exactly one LEASE_ID")
			}
			if *ttl != 0 && *ttl < time.Millisecond {
				return usagef("heartbeat", "--ttl must be at least 1ms")
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				exp, err := c.Heartbeat(ctx, args[0], *ttl)
				if err != nil {
					if errors.Is(err, clientlib.ErrNotFound) {
						return fmt.Errorf("lease %s is not active (expired or released)", oneLine(args[0]))
					}
					return err
				}
				if a.json {
					return writeJSON(a.stdout, struct {
						LeaseID   string `json:"lease_id"`
						ExpiresAt int64  `json:"expires_at"`
					}{args[0], exp.UnixMilli()})
				}
				_, err = fmt.Fprintf(a.stdout, "%s expires %s\n", args[0], untilText(exp, a.now()))
				return err
			})
		},
	}
}

func endSessionCommand() *command {
	return &command{
		name:     "end-session",
		synopsis: "[flags] AGENT SESSION",
		summary:  "release every lease of a session and close it",
		help: `Releases every lease the agent holds in the session and ends the session:
later acquires in it are denied with SESSION_EXPIRED (klockd remembers the
last 1024 sessions each agent ended). Prints how many leases it released.`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 2 {
				return usagef("end-session", "want AGENT and SESSION")
			}
			return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
				n, err := c.EndSession(ctx, args[0], args[1])
				if err != nil {
					return err
				}
				return a.writeAnswer("released", n, fmt.Sprintf("ended session %s of %s, released %d lease%s",
					oneLine(args[1]), oneLine(args[0]), n, plural(n)))
			})
		},
	}
}
