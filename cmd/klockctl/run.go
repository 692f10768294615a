package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klockd/klock/clientlib"
)

// The run command: flock(1) for agents. Its choices, also in its --help:
//
//   - Agent: --agent, else $KLOCK_AGENT, else a fresh agent
//     klockctl-$USER-$PID registered for this run and unregistered at the
//     end, so concurrent runs are different agents ordered by Wait-Die
//     (older waits, younger dies and retries) rather than one agent
//     conflicting with itself. A named agent is registered if needed and
//     left registered.
//   - Session: --session, else $KLOCK_SESSION, else run-$PID.
//   - The command runs with KLOCK_LEASE_IDS and KLOCK_FENCE (comma-separated,
//     in RESOURCE order), KLOCK_AGENT, KLOCK_SESSION and KLOCK_SOCKET set,
//     so klockctl inside it acts in the same agent and session (re-entrant).
//   - SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to klockctl are forwarded to
//     the command. (A terminal's Ctrl-C reaches both, since they share the
//     foreground process group; the command may see SIGINT twice.)
//   - Lease lost (a renewal failed: the daemon was gone past the ttl, or an
//     operator revoked it): klockctl says so on stderr, sends the command
//     SIGTERM, SIGKILL after --kill-after, and exits 1 whatever the command's
//     code, since its work was no longer protected.
//   - The leases are bound to klockctl's own process (bind "process"), so
//     klockctl killed with SIGKILL frees them at once, and the command gets
//     SIGTERM from the kernel (PR_SET_PDEATHSIG): the work and its leases
//     end together. A fresh agent stays registered then (remove it with
//     "klockctl agents unregister").

func runCommand() *command {
	var h holderFlags
	var wait, killAfter *time.Duration
	return &command{
		name:         "run",
		synopsis:     "[flags] RESOURCE... -- COMMAND [ARGS...]",
		summary:      "hold leases while a command runs (flock for agents)",
		takesCommand: true,
		help: `Takes a lease on every RESOURCE atomically (all or none), waiting as long as
--wait allows (default forever; 0 = answer at once), runs COMMAND with
stdin, stdout and stderr attached, renews the leases every ttl/3 while it
runs, releases them when it exits, and exits with its exit code (128+N when a signal N killed it). Exit 1 when
the leases were not granted (the denial is one line on stderr, or its map
on stdout with --json), 3 when klockd is unreachable, 126/127 when COMMAND
cannot be started.

RESOURCEs are read as by "klockctl acquire" (see its --help). One ending in
'/' is a subtree: "klockctl run src/ -- make" holds the whole folder, so no
other agent takes a path under it while make runs. A bare directory
without the slash, "src", stays one plain key that covers nothing else.

The command sees KLOCK_LEASE_IDS and KLOCK_FENCE (comma-separated, in
RESOURCE order), KLOCK_AGENT, KLOCK_SESSION and KLOCK_SOCKET, so klockctl
inside it acts in the same agent and session. SIGINT, SIGTERM, SIGHUP and
SIGQUIT sent to klockctl are forwarded to it.

Without --agent (or $KLOCK_AGENT), run registers a fresh agent
klockctl-$USER-$PID and unregisters it at the end; concurrent runs are then
ordered by Wait-Die: the older run waits, the younger retries after the
suggested delay. A named agent that is not registered yet is registered
without a priority (klockd assigns its registration time) and klockctl says
so on stderr; a registered one is left as it is. The default session is
$KLOCK_SESSION, else run-$PID.

If a lease is lost while the command runs (renewal failed: the daemon was
down longer than the ttl, or an operator revoked it), klockctl says so on
stderr, sends the command SIGTERM (SIGKILL after --kill-after) and exits 1.
The leases are bound to klockctl's process: if klockctl itself is killed
(even with SIGKILL), klockd releases them at once, and the command receives
SIGTERM from the kernel, so the work stops with its leases. (A command that
ignores SIGTERM keeps running, no longer protected.)`,
		flags: func(fs *flag.FlagSet) {
			h.define(fs,
				"hold the leases as agent `ID` (default $KLOCK_AGENT, else a fresh klockctl-$USER-$PID)",
				"in session `ID` (default $KLOCK_SESSION, else run-$PID)",
				30*time.Second)
			wait = waitFlag(fs, waitForever)
			killAfter = durationFlag(fs, "kill-after", 10*time.Second,
				"when a lease is lost, SIGKILL the command this long after SIGTERM")
		},
		run: func(a *app, fs *flag.FlagSet, args []string) error {
			if err := h.checkAgent("run", fs); err != nil {
				return err
			}
			return a.run(&h, *wait, *killAfter, args)
		},
	}
}

// splitCommand splits run's arguments at the first "--" into the part
// klockctl parses and the command, which is passed on untouched.
func splitCommand(args []string) (own, tail []string, ok bool) {
	for i, s := range args {
		if s == "--" {
			return args[:i], args[i+1:], true
		}
	}
	return args, nil, false
}

// run implements the run command; resources are the arguments before "--",
// a.tail the command.
func (a *app) run(h *holderFlags, wait, killAfter time.Duration, resources []string) error {
	if len(a.tail) == 0 {
		return usagef("run", "want RESOURCE... -- COMMAND [ARGS...]")
	}
	intents, err := h.intents("run", resources, a.cwd())
	if err != nil {
		return err
	}
	pid := strconv.Itoa(os.Getpid())
	agent := firstSet(h.agent, a.getenv("KLOCK_AGENT"))
	ownAgent := agent == ""
	if ownAgent {
		agent = "klockctl-" + a.userName() + "-" + pid
	}
	session := firstSet(h.session, a.getenv("KLOCK_SESSION"), "run-"+pid)

	// Signals are caught from here on: while waiting they cancel the wait,
	// while the command runs they are forwarded to it.
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigc)

	waitCtx, stopWaiting := waitContext(context.Background(), 0, wait)
	defer stopWaiting()
	var interrupted os.Signal // written by the watcher, read after watchDone
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case s := <-sigc:
			interrupted = s
			stopWaiting()
		case <-stopWatch:
		}
	}()

	c, lease, err := a.acquireForRun(waitCtx, agent, ownAgent, session, intents, *h.ttl, wait)
	close(stopWatch)
	<-watchDone
	if interrupted != nil {
		if c != nil {
			a.cleanupRun(c, lease, agent, ownAgent)
		}
		return &exitStatus{code: 128 + signalNumber(interrupted), msg: "interrupted while waiting for the leases"}
	}
	if err != nil {
		if c != nil {
			a.cleanupRun(c, nil, agent, ownAgent)
		}
		return err
	}
	defer a.cleanupRun(c, lease, agent, ownAgent)

	code, runErr := a.runHeld(lease, session, agent, c.Socket(), sigc, killAfter)
	if runErr != nil {
		return runErr
	}
	return &exitStatus{code: code}
}

// acquireForRun dials (reconnecting) and takes the leases with the
// blocking, self-renewing Acquire: at once with wait 0, else for up to
// wait (ctx's deadline) or without limit. Its own fresh agent is
// registered first; a named one only if it is not registered yet, saying
// so. On error it has closed what it opened, except that the client is
// returned when only the wait was cut short, for cleanupRun.
func (a *app) acquireForRun(ctx context.Context, agent string, ownAgent bool, session string,
	intents []clientlib.Intent, ttl, wait time.Duration) (*clientlib.Client, *clientlib.Lease, error) {
	c, err := a.dial(ctx, true)
	if err != nil {
		return nil, nil, err
	}
	if ownAgent {
		if _, err := c.Register(ctx, agent, nil); err != nil {
			c.Close()
			return nil, nil, err
		}
	}
	// Bound to this process (clientlib's default): a klockctl killed with
	// SIGKILL frees the leases at once, and Pdeathsig stops the command.
	req := clientlib.AcquireRequest{AgentID: agent, SessionID: session, Intents: intents, TTL: ttl, NoWait: wait == 0,
		Bind: clientlib.BindProcess}
	var lease *clientlib.Lease
	notice, err := acquireRegistering(ctx, c, agent, func() (err error) {
		lease, err = c.Acquire(ctx, req)
		return err
	})
	a.sayRegistered(notice)
	if err == nil {
		return c, lease, nil
	}
	return c, nil, a.acquireFailure(err, ctx, wait)
}

// reportDenialLine is reportDenial with a prefix on the stderr line.
func (a *app) reportDenialLine(d denialJSON, prefix string) error {
	err := a.reportDenial(d)
	var st *exitStatus
	if errors.As(err, &st) {
		st.msg = prefix + st.msg
	}
	return err
}

// runHeld runs the command while lease is held and returns its exit code.
func (a *app) runHeld(lease *clientlib.Lease, session, agent, socket string, sigc <-chan os.Signal, killAfter time.Duration) (int, error) {
	held := lease.Leases()
	ids := make([]string, len(held))
	fences := make([]string, len(held))
	for i, l := range held {
		ids[i] = l.LeaseID
		fences[i] = strconv.FormatUint(l.Fence, 10)
	}
	cmd := exec.Command(a.tail[0], a.tail[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, a.stderr
	cmd.Env = append(os.Environ(),
		"KLOCK_LEASE_IDS="+strings.Join(ids, ","),
		"KLOCK_FENCE="+strings.Join(fences, ","),
		"KLOCK_AGENT="+agent,
		"KLOCK_SESSION="+session,
		"KLOCK_SOCKET="+socket,
	)
	// Pdeathsig is delivered when the thread that forked exits, so the fork
	// happens on a thread this goroutine keeps until klockctl exits.
	runtime.LockOSThread()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			code = 127
		}
		return 0, &exitStatus{code: code, msg: fmt.Sprintf("cannot run %s: %v", oneLine(a.tail[0]), err)}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	lost := lease.Lost()
	var kill <-chan time.Time
	leaseLost := false
	for {
		select {
		case <-done:
			if leaseLost {
				return 0, &exitStatus{code: exitFailed} // the loss was reported when it happened
			}
			return exitCodeOf(cmd.ProcessState), nil
		case s := <-sigc:
			_ = cmd.Process.Signal(s)
		case <-lost:
			lost = nil
			leaseLost = true
			fmt.Fprintf(a.stderr, "klockctl: lease lost (%s): stopping %s\n", oneLine(errText(lease.Err())), oneLine(a.tail[0]))
			_ = cmd.Process.Signal(syscall.SIGTERM)
			kill = time.After(killAfter)
		case <-kill:
			_ = cmd.Process.Kill()
		}
	}
}

// cleanupRun releases the leases (if any), unregisters a fresh agent and
// closes the client. Failures are reported but change no exit code: the
// leases then expire at their ttl.
func (a *app) cleanupRun(c *clientlib.Client, lease *clientlib.Lease, agent string, ownAgent bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if lease != nil {
		if err := lease.Release(ctx); err != nil {
			fmt.Fprintf(a.stderr, "klockctl: could not release the leases (%s); they expire at their ttl\n",
				oneLine(strings.TrimPrefix(err.Error(), "klock: ")))
		}
	}
	if !ownAgent {
		c.Close()
		return
	}
	if lease == nil {
		// A wait cut short may still be queued in the daemon, which would
		// refuse to unregister the agent; closing the connection drops it.
		c.Close()
		var err error
		if c, err = a.dial(ctx, false); err != nil {
			return
		}
	}
	defer c.Close()
	unregisterAgent(ctx, c, agent)
}

// unregisterAgent removes a fresh agent, best effort: a stale agent holds
// nothing and only clutters "klockctl agents". The daemon may still be
// dropping a queued request of the agent's (PRIORITY_CONFLICT), so that is
// retried for up to 2 s.
func unregisterAgent(ctx context.Context, c *clientlib.Client, agent string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for {
		_, err := c.UnregisterAgent(ctx, agent)
		if !errors.Is(err, clientlib.ErrPriorityConflict) {
			return
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return
		}
	}
}

// exitCodeOf returns the command's exit code, or 128+N when signal N killed it.
func exitCodeOf(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// signalNumber returns s's number, for the 128+N exit convention.
func signalNumber(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return int(n)
	}
	return 1
}

// errText is err's text without the package prefix, or "unknown cause".
func errText(err error) string {
	if err == nil {
		return "unknown cause"
	}
	return strings.TrimPrefix(err.Error(), "klock: ")
}
