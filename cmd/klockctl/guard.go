package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// The guard command: a git pre-commit check that refuses to commit files
// another agent holds.

func guardCommand() *command {
	var agent string
	var warn bool
	return &command{
		name:     "guard",
		synopsis: "[flags]",
		summary:  "git pre-commit check: refuse to commit files other agents hold",
		help: `Run as a git pre-commit hook ("klockctl integrate git" installs it). It takes
the staged paths (git diff --cached --name-only -z --no-renames: added,
modified, deleted, and both sides of a rename), makes each absolute, and
asks klockd who holds it, directly or through a subtree lease above it.
When any staged path is held by an agent other than --agent (default
$KLOCK_AGENT), with any predicate, it prints a table (file, holder,
session, predicate, until when) and exits 1, so git refuses the commit.
--warn prints the same table and exits 0.

When klockd cannot be reached, the commit is allowed with a warning (the
guard never starts klockd: with none running, nobody holds anything).

To commit anyway, skip the hook: git commit --no-verify.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&agent, "agent", "", "the committer's agent `ID`: its own leases do not block (default $KLOCK_AGENT)")
			fs.BoolVar(&warn, "warn", false, "print the table but exit 0")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("guard", "guard takes no arguments, only flags")
			}
			return a.guard(firstSet(agent, a.getenv("KLOCK_AGENT")), warn)
		},
	}
}

// stagedPath is one staged path and the resource it is leased as.
type stagedPath struct {
	rel string // as git names it, relative to the top of the work tree
	key string // FILE:<absolute path>
}

// guard implements the guard command.
func (a *app) guard(agent string, warn bool) error {
	staged, err := a.stagedPaths()
	if err != nil {
		return err
	}
	if len(staged) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	// No klockd running means nobody holds anything: the guard never
	// starts one (protocol/README.md "Autostart") just to find that out.
	c, err := clientlib.Dial(ctx, clientlib.Options{
		Socket: a.socketPath(), ClientName: "klockctl-guard/" + version(), NoReconnect: true, NoAutostart: true,
	})
	if err != nil {
		err = unreachableError(err)
		fmt.Fprintf(a.stderr, "klockctl guard: not checked, commit allowed: %s\n", oneLine(errText(err)))
		return nil
	}
	defer c.Close()
	held, err := heldByOthers(ctx, c, staged, agent)
	if err != nil {
		fmt.Fprintf(a.stderr, "klockctl guard: not checked, commit allowed: %s\n", oneLine(errText(err)))
		return nil
	}
	if len(held) == 0 {
		return nil
	}
	a.printHeld(held)
	files := map[string]bool{}
	for _, h := range held {
		files[h.path.rel] = true
	}
	if warn {
		fmt.Fprintf(a.stderr, "klockctl guard: warning: %d staged file%s held by other agents\n", len(files), plural(len(files)))
		return nil
	}
	return &exitStatus{code: exitFailed, msg: fmt.Sprintf(
		"commit refused: %d staged file%s held by other agents (see above); "+
			"wait for them, or ask the holder, or skip this check with git commit --no-verify", len(files), plural(len(files)))}
}

// stagedPaths lists the staged paths of the repository around the working
// directory, made absolute.
func (a *app) stagedPaths() ([]stagedPath, error) {
	top, err := a.git("rev-parse", "--show-toplevel")
	if err != nil {
		return nil, err
	}
	top = strings.TrimRight(top, "\n")
	// --no-renames lists a rename as the deletion of the old path and the
	// addition of the new one, so that a lease on either blocks it.
	out, err := a.git("diff", "--cached", "--name-only", "-z", "--no-renames")
	if err != nil {
		return nil, err
	}
	var paths []stagedPath
	for _, rel := range strings.Split(out, "\x00") {
		if rel == "" {
			continue
		}
		r, err := parseResource(filepath.Join(top, rel), "")
		if err != nil {
			return nil, err
		}
		paths = append(paths, stagedPath{rel: rel, key: "FILE:" + r.Path})
	}
	return paths, nil
}

// git runs git with args in the working directory and returns its stdout.
func (a *app) git(args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = a.cwd()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = err.Error()
		}
		return "", fmt.Errorf("git %s: %s", strings.Join(args, " "), oneLine(msg))
	}
	return out.String(), nil
}

// heldLease is a staged path and a lease another agent holds on it.
type heldPath struct {
	path  stagedPath
	lease protocol.LeaseInfo
}

// guardParallel bounds the requests in flight for a large commit.
const guardParallel = 16

// heldByOthers returns, for each staged path, the leases on it of agents
// other than agent, in the order of staged.
func heldByOthers(ctx context.Context, c *clientlib.Client, staged []stagedPath, agent string) ([]heldPath, error) {
	found := make([][]protocol.LeaseInfo, len(staged))
	errs := make([]error, len(staged))
	sem := make(chan struct{}, guardParallel)
	var wg sync.WaitGroup
	for i, p := range staged {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ls, err := holdersOf(ctx, c, p.key)
			found[i], errs[i] = othersOnly(ls, agent), err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var out []heldPath
	for i, ls := range found {
		for _, l := range ls {
			out = append(out, heldPath{path: staged[i], lease: l})
		}
	}
	return out, nil
}

// printHeld writes the table of staged paths other agents hold to stderr
// (git shows a hook's output to the committer).
func (a *app) printHeld(held []heldPath) {
	now := a.now()
	tw := tabwriter.NewWriter(a.stderr, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tHOLDER\tSESSION\tPREDICATE\tUNTIL")
	for _, h := range held {
		until := time.UnixMilli(h.lease.ExpiresAt)
		file := h.path.rel
		if h.lease.Resource != h.path.key {
			file += " (in " + strings.TrimPrefix(h.lease.Resource, "FILE:") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s (%s)\n", oneLine(file), oneLine(h.lease.AgentID),
			oneLine(h.lease.SessionID), h.lease.Predicate, clock(until), untilText(until, now))
	}
	tw.Flush()
}
