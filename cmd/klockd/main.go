// Command klockd is the klock daemon: it serves leases to agents on a Unix
// socket. Run it with no arguments to serve in the foreground with
// defaults; see `klockd --help`.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/klockd/klock/cmd/internal/tracefile"
	"github.com/klockd/klock/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its inputs and outputs made explicit; it returns the
// exit code: 0 ok, 1 failure, 2 usage.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runDaemon(args, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "klockd %s\n", daemonVersion())
		return 0
	case "help":
		usage(stdout, newFlags(stderr, &options{}))
		return 0
	case "install", "uninstall", "start", "stop", "restart", "status":
		if err := runService(cmd, args, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "klockd: %s\n", strings.TrimPrefix(err.Error(), "klock: "))
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "klockd: unknown command %q; try klockd --help\n", cmd)
		return 2
	}
}

// runDaemon serves in the foreground until SIGINT or SIGTERM.
func runDaemon(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := newFlags(stderr, &o)
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	cfg, err := o.config(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "klockd: %v\n", err)
		return 2
	}
	if o.trace != "" {
		stopTrace, err := tracefile.Start(o.trace)
		if err != nil {
			fmt.Fprintf(stderr, "klockd: --trace: %v\n", err)
			return 2
		}
		defer stopTrace()
	}
	d, err := daemon.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "klockd: %s\n", strings.TrimPrefix(err.Error(), "klock: "))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The first signal starts a graceful shutdown; restoring the default
	// handling then lets a second one end the process at once.
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := d.Run(ctx); err != nil {
		cfg.Logger.Error("klockd failed", "err", err)
		return 1
	}
	return 0
}

// daemonVersion is the -ldflags version, else the module version, else
// the VCS revision, else "dev".
func daemonVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "dev-" + s.Value[:12]
		}
	}
	return "dev"
}
