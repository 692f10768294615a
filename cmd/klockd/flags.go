package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/klockd/klock/daemon"
	"github.com/klockd/klock/daemon/cluster"
	"github.com/klockd/klock/daemon/server"
	"github.com/klockd/klock/protocol"
)

// options are klockd's flags, before they become a daemon.Config.
type options struct {
	socket      string
	socketMode  string
	socketGroup string
	stateDir    string
	fsync       string
	recover     string
	logFormat   string
	logLevel    string
	maxFrame    int
	maxConns    int
	maxInflight int
	maxLeases   int
	maxWaiters  int
	maxAgents   int
	maxPidfds   optionalInt // unset: maxAgents
	maxTTL      time.Duration

	etcd           string // cluster mode: etcd client URLs, comma-separated
	etcdPrefix     string
	nodeID         string
	etcdCACert     string
	etcdCert       string
	etcdKey        string
	etcdSessionTTL time.Duration
	watchBuffer    int
	maxWatches     int
	http           string
	trace          string // a runtime execution trace of the whole run goes here
}

// optionalInt is an int flag whose default is another flag's value: it
// remembers whether it was set.
type optionalInt struct {
	v   int
	set bool
}

func (o *optionalInt) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.Itoa(o.v)
}

func (o *optionalInt) Set(s string) error {
	v, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return errors.New("parse error")
	}
	o.v, o.set = int(v), true
	return nil
}

// or returns the value if it was set, else def.
func (o *optionalInt) or(def int) int {
	if o.set {
		return o.v
	}
	return def
}

// newFlags defines every flag on a new FlagSet. Each flag can also be set
// by the environment variable KLOCK_<NAME> (upper case, '-' as '_'); a
// flag on the command line wins.
func newFlags(stderr io.Writer, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("klockd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.socket, "socket", "", "Unix socket path (default: as root "+protocol.SystemSocket+", else /run/user/$UID/klock/klockd.sock when /run/user/$UID exists, else /tmp/klock-$UID/klockd.sock; here "+protocol.DefaultSocket()+")")
	fs.StringVar(&o.socketMode, "socket-mode", "0660", "permission bits of the socket file, octal")
	fs.StringVar(&o.socketGroup, "socket-group", "", "group (name or gid) that owns the socket, so its members may connect (default: the daemon's group)")
	fs.StringVar(&o.stateDir, "state-dir", protocol.DefaultStateDir(), "state directory for the lease log and snapshots (default: as root "+protocol.SystemStateDir+", else $XDG_STATE_HOME/klock or ~/.local/state/klock); '' runs in memory only (fences then start from the clock in µs, so they still grow across restarts). While it cannot be written (disk full, failing or read-only) state changes are refused with UNAVAILABLE and reads are served, until it heals by itself")
	fs.StringVar(&o.fsync, "fsync", "everysec", "when to fsync the log: always (power-loss safe per reply), everysec (lose at most ~1s on power loss), never (leave it to the OS)")
	fs.StringVar(&o.recover, "recover", "fail", "on a corrupt log or snapshot: fail (refuse to start) or truncate (keep what precedes the damage)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format on stderr: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error (debug logs every request)")
	fs.IntVar(&o.maxFrame, "max-frame", 1<<20, "largest frame body accepted, bytes")
	fs.IntVar(&o.maxConns, "max-conns", server.DefaultMaxConns, "most open client connections; more are refused with RESOURCE_EXHAUSTED")
	fs.IntVar(&o.maxInflight, "max-inflight", server.DefaultMaxInflight, "most requests awaiting an answer on one connection; more get RESOURCE_EXHAUSTED")
	fs.IntVar(&o.maxLeases, "max-leases", daemon.DefaultMaxLeases, "most active leases (about 0.5 KiB each); more get RESOURCE_EXHAUSTED; 0 = unlimited")
	fs.IntVar(&o.maxWaiters, "max-waiters", daemon.DefaultMaxWaiters, "most acquires parked in the daemon at once; more get RESOURCE_EXHAUSTED; 0 = unlimited")
	fs.IntVar(&o.maxAgents, "max-agents", daemon.DefaultMaxAgents, "most registered agents; registering more gets RESOURCE_EXHAUSTED (registering one again is always allowed); 0 = unlimited")
	fs.Var(&o.maxPidfds, "max-pidfds", "watch at most `N` processes at once for the leases bound to them (bind \"process\"), a pidfd each; a bound acquire from one more process gets RESOURCE_EXHAUSTED (default: the value of --max-agents); 0 = unlimited")
	fs.DurationVar(&o.maxTTL, "max-ttl", 24*time.Hour, "longest lease ttl and wait_timeout")
	fs.StringVar(&o.etcd, "etcd", "", "cluster mode: etcd client URLs, comma-separated (http://host:2379,...); klockds given the same etcd and prefix share one lock table (README \"Several machines\"); the state then lives in etcd")
	fs.StringVar(&o.etcdPrefix, "etcd-prefix", cluster.DefaultPrefix, "cluster mode: etcd key prefix of the lock table; klockds with another prefix form another cluster")
	fs.StringVar(&o.nodeID, "node-id", "", "cluster mode: this klockd's name in the cluster, 1..64 of A-Z a-z 0-9 . _ - (default: the host name plus a short random suffix, kept in the state directory)")
	fs.StringVar(&o.etcdCACert, "etcd-cacert", "", "cluster mode: CA bundle (PEM) to verify etcd's server certificate")
	fs.StringVar(&o.etcdCert, "etcd-cert", "", "cluster mode: client certificate (PEM) to present to etcd; with --etcd-key")
	fs.StringVar(&o.etcdKey, "etcd-key", "", "cluster mode: private key (PEM) of --etcd-cert")
	fs.DurationVar(&o.etcdSessionTTL, "etcd-session-ttl", cluster.DefaultSessionTTL, "cluster mode: how long after it stops answering etcd a klockd counts as gone, and the others drop the acquires parked on it")
	fs.IntVar(&o.watchBuffer, "watch-buffer", server.DefaultWatchBuffer, "events a watcher (klockctl watch, the dashboard) may fall behind before klockd cuts it off with a final overflow event")
	fs.StringVar(&o.http, "http", "", "serve Prometheus /metrics and a read-only dashboard at / on `ADDR`: 127.0.0.1:PORT, [::1]:PORT or a Unix socket path (off by default; never on other addresses, as it is unauthenticated)")
	fs.StringVar(&o.trace, "trace", "", "debugging: write a Go runtime execution trace of the whole run to `FILE`, for go tool trace (off by default; it costs CPU and the file grows while klockd runs)")
	fs.IntVar(&o.maxWatches, "max-watches", server.DefaultMaxWatches, "most watch streams open at once (socket and HTTP); more get RESOURCE_EXHAUSTED")
	// Parse errors print one line and a hint, not the whole help.
	fs.Usage = func() { fmt.Fprintln(stderr, "try klockd --help") }
	return fs
}

// usage prints the help text.
func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `klockd serves klock leases to agents on a Unix socket.

Usage:
  klockd [run] [flags]   serve in the foreground (the default; no flags needed)
  klockd version         print the version
  klockd install|uninstall|start|stop|restart|status
                         manage klockd as a system service

Flags (each also read from KLOCK_<FLAG>, e.g. KLOCK_SOCKET, KLOCK_STATE_DIR,
KLOCK_FSYNC; a flag given on the command line wins):
`)
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

// envName is the environment variable for a flag.
func envName(flagName string) string {
	return "KLOCK_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags applies KLOCK_* variables, then the command line. It reports
// done with an exit code when the process should stop (help or error).
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (code int, done bool) {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok || envErr != nil {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = fmt.Errorf("%s=%q: %v", envName(f.Name), v, err)
		}
	})
	if envErr != nil {
		fmt.Fprintf(fs.Output(), "klockd: %v\n", envErr)
		return 2, true
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "--h" || a == "-help" || a == "--help" {
			usage(stdout, fs)
			return 0, true
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout, fs)
			return 0, true
		}
		return 2, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "klockd: unexpected argument %q; try klockd --help\n", fs.Arg(0))
		return 2, true
	}
	return 0, false
}

// config turns the options into a daemon.Config with its logger.
func (o *options) config(stderr io.Writer) (daemon.Config, error) {
	mode, err := strconv.ParseUint(o.socketMode, 8, 32)
	if err != nil || mode == 0 || mode > 0o777 {
		return daemon.Config{}, fmt.Errorf("--socket-mode %q is not an octal permission like 0660", o.socketMode)
	}
	log, err := newLogger(stderr, o.logFormat, o.logLevel)
	if err != nil {
		return daemon.Config{}, err
	}
	cc, err := o.clusterConfig()
	if err != nil {
		return daemon.Config{}, err
	}
	return daemon.Config{
		Socket:      o.socket,
		SocketMode:  fs.FileMode(mode),
		SocketGroup: o.socketGroup,
		StateDir:    o.stateDir,
		Fsync:       o.fsync,
		Recover:     o.recover,
		MaxFrame:    o.maxFrame,
		MaxConns:    o.maxConns,
		MaxInflight: o.maxInflight,
		MaxLeases:   o.maxLeases,
		MaxWaiters:  o.maxWaiters,
		MaxAgents:   o.maxAgents,
		MaxPidfds:   o.maxPidfds.or(o.maxAgents),
		MaxTTL:      o.maxTTL,
		Cluster:     cc,
		WatchBuffer: o.watchBuffer,
		MaxWatches:  o.maxWatches,
		HTTP:        o.http,
		Version:     daemonVersion(),
		Logger:      log,
	}, nil
}

// newLogger builds the slog logger for --log-format and --log-level.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q is not one of debug, info, warn, error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q is not one of text, json", format)
}

// clusterConfig returns the cluster mode settings, or nil without --etcd.
func (o *options) clusterConfig() (*daemon.ClusterConfig, error) {
	if o.etcd == "" {
		for name, v := range map[string]string{"--node-id": o.nodeID, "--etcd-cacert": o.etcdCACert, "--etcd-cert": o.etcdCert, "--etcd-key": o.etcdKey} {
			if v != "" {
				return nil, fmt.Errorf("%s is for cluster mode; give --etcd too", name)
			}
		}
		return nil, nil
	}
	eps, err := cluster.ParseEndpoints(o.etcd)
	if err != nil {
		return nil, err
	}
	return &daemon.ClusterConfig{
		Endpoints:  eps,
		Prefix:     o.etcdPrefix,
		NodeID:     o.nodeID,
		CACert:     o.etcdCACert,
		Cert:       o.etcdCert,
		Key:        o.etcdKey,
		SessionTTL: o.etcdSessionTTL,
	}, nil
}
