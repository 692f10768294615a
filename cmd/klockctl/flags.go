package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// durationValue is a flag.Value holding a duration written the Go way
// (1m30s, 500ms, 2h) or as a bare number of seconds (30, 1.5).
type durationValue time.Duration

// Set parses s with parseDuration.
func (d *durationValue) Set(s string) error {
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = durationValue(v)
	return nil
}

// String returns the duration in Go syntax.
func (d *durationValue) String() string { return time.Duration(*d).String() }

// Type names the value in --help.
func (d *durationValue) Type() string { return "duration" }

// parseDuration accepts a Go duration or a bare number of seconds; negative
// durations are rejected since no klockctl flag means anything by them.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f > float64(1<<63-1)/float64(time.Second) {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		d = time.Duration(f * float64(time.Second))
	} else {
		d, err = time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("bad duration %q: want e.g. 30s, 1m30s, 500ms or a number of seconds", s)
		}
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	return d, nil
}

// durationFlag defines a durationValue flag on fs and returns where it lives.
func durationFlag(fs *flag.FlagSet, name string, def time.Duration, usage string) *time.Duration {
	d := def
	fs.Var((*durationValue)(&d), name, usage)
	return &d
}

// waitForever is the value of a --wait flag that sets no limit.
const waitForever time.Duration = -1

// waitValue is the --wait flag of acquire and run, one meaning for both:
// a duration as durationValue takes it (0: answer at once), or "forever" or
// any negative value: no limit (waitForever).
type waitValue time.Duration

// Set parses s: "forever", a negative number or duration, or a duration.
func (w *waitValue) Set(s string) error {
	t := strings.TrimSpace(s)
	if t == "forever" || strings.HasPrefix(t, "-") {
		if _, err := parseDuration(strings.TrimPrefix(t, "-")); t != "forever" && err != nil {
			return err
		}
		*w = waitValue(waitForever)
		return nil
	}
	d, err := parseDuration(t)
	if err != nil {
		return fmt.Errorf("%v, or forever", err)
	}
	*w = waitValue(d)
	return nil
}

// String returns "forever" or the duration in Go syntax.
func (w *waitValue) String() string {
	if time.Duration(*w) < 0 {
		return "forever"
	}
	return time.Duration(*w).String()
}

// waitFlag defines --wait on fs with default def and returns where it lives.
func waitFlag(fs *flag.FlagSet, def time.Duration) *time.Duration {
	d := def
	fs.Var((*waitValue)(&d), "wait", "wait up to this long for the grant: a duration (30s, 2m; 0 = answer at once),\n"+
		"or forever (or any negative value) for no limit")
	return &d
}

// flagGiven reports whether the flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// usageError is a mistake on the command line: klockctl exits 2.
type usageError struct {
	cmd string // "" for the top level
	msg string
}

func (e *usageError) Error() string {
	help := "klockctl --help"
	if e.cmd != "" {
		help = "klockctl " + e.cmd + " --help"
	}
	return fmt.Sprintf("%s (see %s)", e.msg, help)
}

// usagef returns a usageError for command cmd.
func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// errHelpShown says --help was asked for and answered: klockctl exits 0.
var errHelpShown = errors.New("klock: help shown")

// parseArgs parses fs over args and returns the positional arguments. Flags
// may come after positional arguments (klockctl release ID --json); "--"
// ends the flags and everything after it is positional as written.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// printFlags writes one entry per flag of fs, GNU style (--name TYPE), with
// its usage text and default.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		if dv, ok := f.Value.(*durationValue); ok {
			typ = dv.Type()
		}
		if _, ok := f.Value.(*waitValue); ok {
			typ = "duration|forever"
		}
		head := "  --" + f.Name
		if len(f.Name) == 1 {
			head = "  -" + f.Name
		}
		if typ != "" {
			head += " " + typ
		}
		fmt.Fprintf(w, "%s\n      %s", head, strings.ReplaceAll(usage, "\n", "\n      "))
		if !isZeroDefault(f) {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func isZeroDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "false", "0s":
		return true
	}
	return false
}
