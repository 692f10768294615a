package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// This file holds "klockctl watch": the daemon's watch stream, a line per
// event.

func watchCommand() *command {
	var agent, prefix string
	return &command{
		name:     "watch",
		synopsis: "[--prefix P] [--agent A] [--json]",
		summary:  "print lease events as they happen, until interrupted",
		help: `Prints every event as it happens, one line each: time, event, resource,
agent, predicate and fence; a grant of a lease bound to its process names
that process, and a wait or die names the agent it was decided by. Events: grant, release, expire, revoke, wait (a request got WAIT),
die, freeze, thaw, and end (a process-bound lease whose process exited).
With --json each line is the event's JSON object (the protocol's keys; times
in Unix ms). It runs until interrupted (Ctrl-C).

A watcher that falls too far behind is cut off by klockd; klockctl then says
so on stderr and starts watching again (the events in between are lost).

--prefix matches the start of the resource key (FILE:/src/); a prefix
starting with "/" means FILE:<prefix>. --prefix /src/ shows the folder key
FILE:/src/ and every key under it, not a folder key above it (FILE:/),
whose lease covers /src/ too.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&agent, "agent", "", "only events of agent `ID`")
			fs.StringVar(&prefix, "prefix", "", "only resources whose key starts with `PREFIX`")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("watch", "watch takes no arguments, only flags")
			}
			if strings.HasPrefix(prefix, "/") {
				prefix = "FILE:" + prefix
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return a.watch(ctx, clientlib.WatchFilter{AgentID: agent, Prefix: prefix})
		},
	}
}

// watch prints events until ctx ends (nil), the daemon goes away or
// refuses the watch (the error).
func (a *app) watch(ctx context.Context, f clientlib.WatchFilter) error {
	for {
		dctx, cancel := context.WithTimeout(ctx, requestTimeout)
		w, err := clientlib.Watch(dctx, clientlib.Options{Socket: a.socketPath()}, f)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return unreachableError(err)
		}
		stop := context.AfterFunc(ctx, func() { w.Close() })
		err = a.printEvents(w)
		stop()
		w.Close()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, clientlib.ErrWatchOverflow):
			fmt.Fprintln(a.stderr, "klockctl: this watch fell behind and klockd cut it off; events were lost; watching again")
		case errors.Is(err, clientlib.ErrClosed):
			return fmt.Errorf("klock: klockd closed the watch connection (stopped or restarted)")
		default:
			return err
		}
	}
}

// printEvents prints w's events until its stream ends.
func (a *app) printEvents(w *clientlib.Watcher) error {
	enc := json.NewEncoder(a.stdout)
	for {
		ev, err := w.Next()
		if err != nil {
			return err
		}
		if a.json {
			err = enc.Encode(ev)
		} else {
			err = formatEvent(a.stdout, ev, a.loc)
		}
		if err != nil {
			return err
		}
	}
}

// formatEvent writes one event as a line: time, event, resource, agent,
// predicate, fence, the process a granted lease is bound to, and who
// decided a wait or die.
func formatEvent(w io.Writer, ev *protocol.WatchEvent, loc *time.Location) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-7s  %s", time.UnixMilli(ev.At).In(loc).Format("15:04:05.000"), ev.Event, cell(ev.Resource))
	if ev.AgentID != "" {
		fmt.Fprintf(&b, "  %s", oneLine(ev.AgentID))
	}
	if ev.Predicate != "" {
		fmt.Fprintf(&b, "  %s", ev.Predicate)
	}
	if ev.Fence != 0 {
		fmt.Fprintf(&b, "  fence %d", ev.Fence)
	}
	switch ev.Event {
	case protocol.EventGrant:
		if ev.BoundPID != 0 {
			fmt.Fprintf(&b, "  (bound to process %d)", ev.BoundPID)
		}
	case protocol.EventWait:
		fmt.Fprintf(&b, "  (waits for %s)", cell(ev.HeldBy))
	case protocol.EventDie:
		fmt.Fprintf(&b, "  (decided by %s)", cell(ev.HeldBy))
	}
	_, err := fmt.Fprintln(w, b.String())
	return err
}
