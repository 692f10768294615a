package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Exit codes, as documented in doc.go.
const (
	exitOK          = 0
	exitFailed      = 1 // denied, or any error
	exitUsage       = 2
	exitUnreachable = 3
)

// app is one klockctl invocation: where it reads and writes, its
// environment, and the global flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	getwd          func() (string, error)
	now            func() time.Time
	loc            *time.Location

	// Global flags, also accepted after the command name.
	socket string
	json   bool

	// tail is what follows "--" for a command that runs another (run).
	tail []string
}

// newApp returns an app wired to the process: os streams, environment,
// working directory, wall clock and local time zone.
func newApp() *app {
	return &app{
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		getenv: os.Getenv,
		getwd:  os.Getwd,
		now:    time.Now,
		loc:    time.Local,
	}
}

// command is one klockctl subcommand.
type command struct {
	name     string
	synopsis string // the arguments after the name, for usage lines
	summary  string // one line for the command list
	help     string // what it does, printed by --help before the flags
	run      func(a *app, fs *flag.FlagSet, args []string) error
	// flags defines the command's own flags on fs before parsing; nil if none.
	flags func(fs *flag.FlagSet)
	// takesCommand says the arguments after the first "--" are a command
	// to run, kept out of flag parsing and passed in app.tail.
	takesCommand bool
}

// commands returns every command, by name. Each command's file defines its
// entry; the table is built per call so that flag variables are fresh.
func commands() map[string]*command {
	list := []*command{
		statusCommand(), countCommand(), evictCommand(),
		leasesCommand(), acquireCommand(), releaseCommand(), heartbeatCommand(), endSessionCommand(),
		agentsCommand(),
		revokeCommand(), freezeCommand(), thawCommand(),
		runCommand(), versionCommand(), resolveCommand(),
		hookCommand(), whyCommand(), mcpCommand(), guardCommand(), integrateCommand(),
		watchCommand(), topCommand(),
	}
	m := make(map[string]*command, len(list))
	for _, c := range list {
		m[c.name] = c
	}
	return m
}

// main runs klockctl with args (without the program name) and returns the
// exit code. Every error is one line on stderr.
func (a *app) main(args []string) int {
	err := a.dispatch(args)
	code := exitCode(err)
	if err != nil && !errors.Is(err, errHelpShown) {
		var quiet *exitStatus
		if !errors.As(err, &quiet) || quiet.msg != "" {
			fmt.Fprintln(a.stderr, "klockctl: "+oneLine(strings.TrimPrefix(err.Error(), "klock: ")))
		}
	}
	return code
}

// dispatch parses the global flags, finds the command and runs it.
func (a *app) dispatch(args []string) error {
	global := flag.NewFlagSet("klockctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	a.commonFlags(global)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.printTopUsage(a.stdout)
			return errHelpShown
		}
		return usagef("", "%v", err)
	}
	rest := global.Args()
	if len(rest) == 0 {
		a.printTopUsage(a.stderr)
		return &exitStatus{code: exitUsage}
	}
	name, rest := rest[0], rest[1:]
	cmds := commands()
	if name == "help" {
		if len(rest) == 0 {
			a.printTopUsage(a.stdout)
			return errHelpShown
		}
		c, ok := cmds[rest[0]]
		if !ok {
			return usagef("", "unknown command %q", rest[0])
		}
		a.printUsage(a.stdout, c, a.flagSet(c))
		return errHelpShown
	}
	c, ok := cmds[name]
	if !ok {
		return usagef("", "unknown command %q", name)
	}
	fs := a.flagSet(c)
	if c.takesCommand {
		rest, a.tail, _ = splitCommand(rest)
	}
	pos, err := parseArgs(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.printUsage(a.stdout, c, fs)
			return errHelpShown
		}
		return usagef(c.name, "%v", err)
	}
	return c.run(a, fs, pos)
}

// commonFlags defines the flags every command takes on fs.
func (a *app) commonFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.socket, "socket", a.socket,
		"connect to klockd's socket at `PATH` and no other (default $KLOCK_SOCKET, else your own klockd\n"+
			"(/run/user/$UID/klock/klockd.sock, /tmp/klock-$UID/klockd.sock), else the system one\n"+
			"(/run/klock/klockd.sock) if you may connect, else a klockd started for you:\n"+
			"KLOCK_NO_AUTOSTART=1 turns that off)")
	fs.BoolVar(&a.json, "json", a.json, "print the result as JSON (the protocol's result map; times in Unix ms)")
}

// flagSet returns c's flag set: the common flags and c's own.
func (a *app) flagSet(c *command) *flag.FlagSet {
	fs := flag.NewFlagSet("klockctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if c.flags != nil {
		c.flags(fs)
	}
	a.commonFlags(fs)
	return fs
}

// printUsage writes c's --help: synopsis, description, flags.
func (a *app) printUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: klockctl %s %s\n\n%s\n", c.name, c.synopsis, strings.TrimSpace(c.help))
	fmt.Fprintf(w, "\nflags:\n")
	printFlags(w, fs)
}

// printTopUsage writes the command list and the global flags.
func (a *app) printTopUsage(w io.Writer) {
	fmt.Fprint(w, `klockctl inspects and drives klockd, the klock lease daemon.

usage: klockctl [--socket PATH] [--json] COMMAND [flags] [args]

commands:
`)
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, cmds[n].summary)
	}
	fmt.Fprint(w, `
Every command takes --help, --socket and --json. Flags may also follow the
arguments. Resources are TYPE:path (FILE, SYMBOL, API_ENDPOINT,
DATABASE_TABLE, CONFIG_KEY); a bare path is a FILE. FILE paths are made
absolute and cleaned, and a linked git worktree's paths are keyed as the
main worktree's (KLOCK_WORKTREES=separate keeps them apart). A path ending
in '/' is a subtree covering everything under it (src/ is the folder; src
is one plain key).

exit codes: 0 ok; 1 denied or failed; 2 usage error; 3 klockd unreachable.
"klockctl run" exits with its command's code. A change klockd cannot make
durable (UNAVAILABLE: its disk is full or failing) is retried for up to 5s,
then reported with exit 1.

global flags:
`)
	fs := flag.NewFlagSet("klockctl", flag.ContinueOnError)
	a.commonFlags(fs)
	printFlags(w, fs)
}

// exitStatus ends klockctl with code, after printing msg as the error line
// if it is not empty.
type exitStatus struct {
	code int
	msg  string
}

func (e *exitStatus) Error() string { return e.msg }

// exitCode maps an error returned by a command to the process exit code.
func exitCode(err error) int {
	var us *usageError
	var st *exitStatus
	switch {
	case err == nil, errors.Is(err, errHelpShown):
		return exitOK
	case errors.As(err, &st):
		return st.code
	case errors.As(err, &us):
		return exitUsage
	case isUnreachable(err):
		return exitUnreachable
	default:
		return exitFailed
	}
}

// requestTimeout bounds one-shot requests, so that a wedged daemon cannot
// hang a script.
const requestTimeout = 30 * time.Second

// oneShotUnavailableWait bounds how long a one-shot command retries a
// change answered UNAVAILABLE before it reports it (exit 1): a person or a
// script learns of a full disk in seconds, not at requestTimeout.
const oneShotUnavailableWait = 5 * time.Second

// cwd returns the working directory for resolving bare paths, or "" when it
// cannot be read (then only absolute paths work).
func (a *app) cwd() string {
	d, err := a.getwd()
	if err != nil {
		return ""
	}
	return d
}
