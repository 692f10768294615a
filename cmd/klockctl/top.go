package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// This file holds "klockctl top": a live terminal view of the daemon,
// redrawn about once a second with plain ANSI sequences.

func topCommand() *command {
	var every time.Duration
	var once bool
	return &command{
		name:     "top",
		synopsis: "[--every D] [--once]",
		summary:  "a live view of agents, leases, queues and rates; q to quit",
		help: `Shows the daemon live, redrawn about once a second: agents with their lease
and wait counts, the leases held longest, the longest queues (who waits, and
for whom), and grants, waits, dies and expirations per second. Quit with q or
Ctrl-C.

On a terminal it takes the whole screen and restores it on exit. --once
prints one frame without terminal control codes and exits (for scripts).`,
		flags: func(fs *flag.FlagSet) {
			fs.DurationVar(&every, "every", time.Second, "redraw every `D`")
			fs.BoolVar(&once, "once", false, "print one frame and exit")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("top", "top takes no arguments, only flags")
			}
			if every < 100*time.Millisecond {
				return usagef("top", "--every must be at least 100ms")
			}
			if once {
				return a.oneShot(func(ctx context.Context, c *clientlib.Client) error {
					var s topSample
					if err := s.read(ctx, c); err != nil {
						return err
					}
					return drawTop(a.stdout, &s, nil, -1, a.now(), 100, 40)
				})
			}
			return a.top(every)
		},
	}
}

// topSample is one reading of the daemon.
type topSample struct {
	at      time.Time
	stats   *protocol.StatsResult
	agents  []protocol.AgentInfo
	leases  []protocol.LeaseInfo
	waiters []protocol.WaiterInfo
}

// read takes a sample through c.
func (s *topSample) read(ctx context.Context, c *clientlib.Client) error {
	var err error
	s.at = time.Now()
	if s.stats, err = c.Stats(ctx); err != nil {
		return err
	}
	if s.agents, _, err = c.ListAgents(ctx, 10000); err != nil {
		return err
	}
	if s.leases, _, err = c.ListLeases(ctx, clientlib.LeaseFilter{Limit: 10000}); err != nil {
		return err
	}
	s.waiters, _, err = c.ListWaiters(ctx, 10000)
	return err
}

// top runs the live view until q, Ctrl-C or SIGTERM.
func (a *app) top(every time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := a.dial(ctx, true)
	if err != nil {
		return err
	}
	defer c.Close()

	out := a.stdout
	width, height := 100, 40
	fd := -1
	if f, ok := a.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd = int(f.Fd())
	}
	quit := make(chan struct{})
	if fd >= 0 {
		// Raw input, so q needs no Enter (and Ctrl-C arrives as a byte);
		// the alternate screen, so the shell's screen comes back on exit.
		if in, ok := a.stdin.(*os.File); ok && term.IsTerminal(int(in.Fd())) {
			if old, err := term.MakeRaw(int(in.Fd())); err == nil {
				defer term.Restore(int(in.Fd()), old)
			}
		}
		fmt.Fprint(out, "\x1b[?1049h\x1b[?25l")
		defer fmt.Fprint(out, "\x1b[?25h\x1b[?1049l")
	}
	go func() {
		b := make([]byte, 1)
		for {
			if n, err := a.stdin.Read(b); err != nil || n == 1 && (b[0] == 'q' || b[0] == 'Q' || b[0] == 3) {
				if err == nil {
					close(quit)
				}
				return
			}
		}
	}()

	var prev *topSample
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if fd >= 0 {
			if w, h, err := term.GetSize(fd); err == nil {
				width, height = w, h
			}
		}
		s := new(topSample)
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		err := s.read(rctx, c)
		cancel()
		var frame strings.Builder
		if fd >= 0 {
			frame.WriteString("\x1b[H\x1b[2J")
		}
		if err != nil {
			fmt.Fprintf(&frame, "klockctl top: %s (retrying)\r\n", oneLine(err.Error()))
		} else {
			var elapsed time.Duration
			if prev != nil {
				elapsed = s.at.Sub(prev.at)
			}
			drawTop(&frame, s, prev, elapsed, a.now(), width, height)
			prev = s
		}
		io.WriteString(out, strings.ReplaceAll(strings.ReplaceAll(frame.String(), "\r\n", "\n"), "\n", "\r\n"))
		select {
		case <-ctx.Done():
			return nil
		case <-quit:
			return nil
		case <-tick.C:
		}
	}
}

// drawTop writes one frame for s (and rates against prev, elapsed
// earlier), fitted to width columns and height rows. elapsed < 0 means a
// single frame (--once): no rates, no key hint.
func drawTop(w io.Writer, s, prev *topSample, elapsed time.Duration, now time.Time, width, height int) error {
	var b strings.Builder
	line := func(format string, args ...any) {
		l := fmt.Sprintf(format, args...)
		if r := []rune(l); len(r) > width {
			l = string(r[:max(width-1, 0)]) + "…"
		}
		b.WriteString(l + "\n")
	}
	st := s.stats
	quits := "    (q quits)"
	if prev == nil && elapsed < 0 {
		quits = ""
	}
	line("klockd: %d agents, %d leases, %d waiting, %d connections, up %s%s",
		st.Agents, st.Leases, st.Waiters, st.Connections, roundDuration(time.Duration(st.UptimeMS)*time.Millisecond).Truncate(time.Second), quits)
	rate := func(now, before uint64) string {
		if prev == nil || elapsed <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(now-before)/elapsed.Seconds())
	}
	var p protocol.StatsResult
	if prev != nil {
		p = *prev.stats
	}
	line("per second: %s grants, %s waits, %s dies, %s expirations", rate(st.Grants, p.Grants), rate(st.Waits, p.Waits),
		rate(st.Dies, p.Dies), rate(st.Expirations, p.Expirations))
	line("")

	// Share the rows left between the three tables.
	rows := max(height-3-3*3, 3)
	per := max(rows/3, 1)

	agents := slices.Clone(s.agents)
	slices.SortStableFunc(agents, func(x, y protocol.AgentInfo) int { return (y.Leases + y.Waiting) - (x.Leases + x.Waiting) })
	line("%-28s %10s %7s %8s", "AGENT", "PRIORITY", "LEASES", "WAITING")
	for i, ag := range agents {
		if i == per {
			line("  … %d more", len(agents)-per)
			break
		}
		line("%-28s %10d %7d %8d", clip(ag.AgentID, 28), ag.Priority, ag.Leases, ag.Waiting)
	}
	line("")

	leases := slices.Clone(s.leases)
	slices.SortStableFunc(leases, func(x, y protocol.LeaseInfo) int { return int(x.AcquiredAt - y.AcquiredAt) })
	line("%-44s %-16s %-10s %9s %10s", "HELD LONGEST", "AGENT", "PREDICATE", "HELD", "EXPIRES")
	for i, l := range leases {
		if i == per {
			line("  … %d more", len(leases)-per)
			break
		}
		line("%-44s %-16s %-10s %9s %10s", clip(l.Resource, 44), clip(l.AgentID, 16), l.Predicate,
			roundDuration(now.Sub(time.UnixMilli(l.AcquiredAt))).Truncate(time.Second), strings.TrimPrefix(expiresText(l.ExpiresAt, now), "in "))
	}
	line("")

	type queue struct {
		resource string
		ws       []protocol.WaiterInfo
	}
	var qs []queue
	for _, wt := range s.waiters {
		if n := len(qs); n > 0 && qs[n-1].resource == wt.Resource {
			qs[n-1].ws = append(qs[n-1].ws, wt)
		} else {
			qs = append(qs, queue{wt.Resource, []protocol.WaiterInfo{wt}})
		}
	}
	slices.SortStableFunc(qs, func(x, y queue) int { return len(y.ws) - len(x.ws) })
	line("%-44s %6s  %s", "LONGEST QUEUES", "QUEUED", "FIRST IN LINE, WAITS FOR")
	if len(qs) == 0 {
		line("  nobody is waiting")
	}
	for i, q := range qs {
		if i == per {
			line("  … %d more", len(qs)-per)
			break
		}
		first := q.ws[0]
		line("%-44s %6d  %s (%s so far) waits for %s", clip(q.resource, 44), len(q.ws), first.AgentID,
			roundDuration(now.Sub(time.UnixMilli(first.Since))).Truncate(time.Second), cell(first.WaitsFor))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// clip shortens s to n runes, keeping its end (the file name matters most).
func clip(s string, n int) string {
	s = oneLine(s)
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return "…" + string(r[len(r)-n+1:])
}
