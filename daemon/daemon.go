package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/metrics"
	"github.com/klockd/klock/daemon/server"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/daemon/systemd"
	"github.com/klockd/klock/daemon/web"
	"github.com/klockd/klock/protocol"
)

// ShutdownTimeout bounds a graceful shutdown; the daemon exits within it.
const ShutdownTimeout = 4 * time.Second

// Default limits of klockd's flags. Without a cap, any user who can reach
// the socket could grow the daemon without bound: a lease costs about
// 0.5 KiB, so the default caps lease memory near 0.5 GiB. One machine runs
// tens to hundreds of agents; an agent costs little until it has ended
// sessions to remember (up to 1024 ids each), so DefaultMaxAgents only
// bounds a hostile client.
const (
	DefaultMaxLeases  = 1_000_000
	DefaultMaxWaiters = 100_000
	DefaultMaxAgents  = 10_000
)

// Config is everything klockd can be told. The zero value of each field
// means its documented default.
type Config struct {
	Socket      string      // socket path; "" = protocol.DefaultSocket()
	SocketMode  fs.FileMode // 0 = 0660
	SocketGroup string      // group owning the socket; "" = the daemon's
	StateDir    string      // state directory; "" = in memory only (klockd defaults to protocol.DefaultStateDir)
	Fsync       string      // always | everysec | never; "" = everysec
	Recover     string      // fail | truncate; "" = fail
	MaxFrame    int         // largest frame body; 0 = 1 MiB
	MaxConns    int         // 0 = 4096
	MaxInflight int         // per connection; 0 = 1024
	MaxLeases   int         // 0 = unlimited; klockd's flag defaults to DefaultMaxLeases
	MaxWaiters  int         // 0 = unlimited; klockd's flag defaults to DefaultMaxWaiters
	MaxAgents   int         // registered agents; 0 = unlimited; klockd's flag defaults to DefaultMaxAgents
	MaxPidfds   int         // processes watched for bound leases, a pidfd each; 0 = unlimited; klockd's flag defaults to MaxAgents
	MaxTTL      time.Duration
	// Cluster, when set, makes klockd one node of a lock table shared
	// through etcd; the state then lives in etcd, and StateDir only keeps
	// the node id.
	Cluster     *ClusterConfig
	WatchBuffer int          // events a watch may fall behind; 0 = server.DefaultWatchBuffer
	MaxWatches  int          // watch streams open at once; 0 = server.DefaultMaxWatches
	HTTP        string       // --http: serve /metrics and the dashboard on this loopback address or Unix socket; "" = off
	Version     string       // reported by hello and logs
	Logger      *slog.Logger // nil = slog.Default()
}

// Daemon is a configured klockd, ready to Run.
type Daemon struct {
	cfg Config
	log *slog.Logger
	srv atomic.Pointer[server.Server] // while Run serves

	// observeWrite times journal writes for /metrics; nil without --http.
	observeWrite func(time.Duration)
}

// New checks cfg and returns a Daemon.
func New(cfg Config) (*Daemon, error) {
	switch cfg.Fsync {
	case "":
		cfg.Fsync = "everysec"
	case "always", "everysec", "never":
	default:
		return nil, fmt.Errorf("klock: --fsync %q is not one of always, everysec, never", cfg.Fsync)
	}
	switch cfg.Recover {
	case "":
		cfg.Recover = "fail"
	case "fail", "truncate":
	default:
		return nil, fmt.Errorf("klock: --recover %q is not one of fail, truncate", cfg.Recover)
	}
	if cfg.MaxFrame < 0 || cfg.MaxConns < 0 || cfg.MaxInflight < 0 || cfg.MaxLeases < 0 || cfg.MaxWaiters < 0 || cfg.MaxAgents < 0 || cfg.MaxPidfds < 0 || cfg.MaxTTL < 0 ||
		cfg.WatchBuffer < 0 || cfg.MaxWatches < 0 {
		return nil, errors.New("klock: limits must not be negative")
	}
	if cfg.MaxFrame > 0 && cfg.MaxFrame < 1024 {
		return nil, fmt.Errorf("klock: --max-frame %d is too small; at least 1024 bytes", cfg.MaxFrame)
	}
	if cfg.MaxTTL > 0 && cfg.MaxTTL < time.Millisecond {
		return nil, fmt.Errorf("klock: --max-ttl %s is too small; at least 1ms", cfg.MaxTTL)
	}
	if cfg.Cluster != nil {
		if err := cfg.Cluster.check(); err != nil {
			return nil, err
		}
	}
	if cfg.HTTP != "" {
		if err := web.CheckAddr(cfg.HTTP); err != nil {
			return nil, err
		}
	}
	if cfg.Socket == "" {
		cfg.Socket = protocol.DefaultSocket()
	}
	if cfg.MaxFrame == 0 {
		cfg.MaxFrame = protocol.DefaultMaxFrame
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Daemon{cfg: cfg, log: log}, nil
}

// Run serves until ctx ends, then shuts down gracefully (parked acquires
// are answered SHUTTING_DOWN, the socket is removed) within
// ShutdownTimeout. It returns nil after a clean stop, or the error that
// prevented starting or serving.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.cfg
	ecfg := engine.Config{
		MaxLeases:  cfg.MaxLeases,
		MaxWaiters: cfg.MaxWaiters,
		MaxAgents:  cfg.MaxAgents,
		MaxTTL:     cfg.MaxTTL.Milliseconds(),
		AdminUID:   uint32(os.Getuid()),
	}
	var m *metrics.Metrics
	if cfg.HTTP != "" {
		m = metrics.New()
		d.observeWrite = m.ObserveJournalWrite
	}
	var eng *engine.Engine
	var journal server.Journal
	if cfg.Cluster != nil {
		eng = engine.New(ecfg) // its state comes from the cluster
		if cfg.StateDir != "" {
			// It keeps only the node id, but two daemons sharing it would
			// be one node twice.
			unlock, err := store.LockDir(cfg.StateDir)
			if err != nil {
				return err
			}
			defer unlock()
		}
	} else {
		var closeStore func()
		var err error
		if eng, journal, closeStore, err = d.openState(ecfg); err != nil {
			return err
		}
		defer closeStore()
	}

	lns, socket, err := d.listeners()
	if err != nil {
		return err
	}

	scfg := server.Config{
		Engine:      eng,
		Journal:     journal,
		Version:     cfg.Version,
		MaxFrame:    cfg.MaxFrame,
		MaxConns:    cfg.MaxConns,
		MaxInflight: cfg.MaxInflight,
		MaxPidfds:   cfg.MaxPidfds,
		WatchBuffer: cfg.WatchBuffer,
		MaxWatches:  cfg.MaxWatches,
		Logger:      d.log,
		OnDegraded: func(f *store.Fault) {
			status := "STATUS=serving on " + socket
			if f != nil {
				status = "STATUS=degraded since " + f.Since.UTC().Format(time.RFC3339) + ": state changes are refused (" + f.Reason() + "); reads are served; retrying every second"
			}
			if _, err := systemd.Notify(status); err != nil {
				d.log.Warn("telling the service manager our status failed", "err", err)
			}
		},
	}
	if m != nil {
		scfg.ObserveRequest = m.ObserveRequest
	}
	srv := server.New(scfg)
	if cfg.Cluster != nil {
		node, err := d.joinCluster(ctx, srv, ecfg)
		if err != nil {
			srv.Close()
			closeListeners(lns)
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
			defer cancel()
			if err := node.Close(cctx); err != nil {
				d.log.Warn("leaving the cluster cleanly failed; its session lapses on its own", "err", err)
			}
		}()
	}
	d.srv.Store(srv)
	defer d.srv.Store(nil)
	stopHTTP := func() {}
	if m != nil {
		if stopHTTP, err = d.serveHTTP(srv, m); err != nil {
			srv.Close()
			return err
		}
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- srv.Serve(context.Background(), ln) }()
	}
	stateDir := cfg.StateDir
	switch {
	case cfg.Cluster != nil:
		stateDir = "(etcd " + strings.Join(cfg.Cluster.Endpoints, ",") + " " + cfg.Cluster.Prefix + ")"
	case stateDir == "":
		stateDir = "(in memory)"
	}
	d.log.Info("klockd started", "version", cfg.Version, "socket", socket, "pid", os.Getpid(), "state_dir", stateDir, "fsync", cfg.Fsync)
	if _, err := systemd.Notify("READY=1\nSTATUS=serving on " + socket); err != nil {
		d.log.Warn("telling the service manager we are ready failed", "err", err)
	}
	wctx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go systemd.Watchdog(wctx)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		// A *server.PanicError lands here too: the state in memory may no
		// longer match the log, so klockd stops and exits non-zero for its
		// supervisor to restart it from the log.
		d.log.Error("serving failed", "err", serveErr)
		_, _ = systemd.Notify("STATUS=stopping after an error: " + serveErr.Error())
	}
	_, _ = systemd.Notify("STOPPING=1")
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		d.log.Warn("graceful shutdown timed out; connections closed", "err", err)
	}
	stopHTTP() // after Shutdown, which ends the dashboards' event streams
	// Removing the socket before the store closes tells clients at once
	// that this daemon is gone.
	for _, ln := range lns {
		ln.Close()
	}
	d.log.Info("klockd stopped", "version", cfg.Version, "socket", socket, "pid", os.Getpid())
	if serveErr != nil && !errors.Is(serveErr, server.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// listeners returns the sockets to serve: those systemd passed (socket
// activation), else a new socket at cfg.Socket.
func (d *Daemon) listeners() ([]net.Listener, string, error) {
	lns, err := systemd.Listeners()
	if err != nil {
		return nil, "", err
	}
	if len(lns) > 0 {
		return lns, lns[0].Addr().String() + " (from systemd)", nil
	}
	ln, err := server.Listen(server.ListenConfig{Path: d.cfg.Socket, Mode: d.cfg.SocketMode, Group: d.cfg.SocketGroup})
	if err != nil {
		return nil, "", err
	}
	return []net.Listener{ln}, d.cfg.Socket, nil
}

// closeListeners closes the sockets of a start that failed.
func closeListeners(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}
