package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klockd/klock/cmd/internal/tracefile"
)

// config is the parsed command line.
type config struct {
	backends  []string
	workloads []string
	workers   []int
	duration  time.Duration
	warmup    time.Duration
	reps      int
	leases    int    // held in the many-leases workload
	session   int    // leases and waiters of the stall workload's session
	stallBy   string // how that session ends: StallByEndSession or StallByExit
	// releaseWait is how long the memory report watches RSS after the
	// held leases are released; 0: no memory report.
	releaseWait time.Duration
	klockd      string
	compare     []compareBinary // -compare: the klock back ends again on other binaries
	jsonOut     string
	mdOut       string
	from        string // re-report a JSON file instead of measuring
	plotOut     string
	short       bool
	profile     string // CPU profile of the tool (the client side)
	trace       string // runtime execution trace of the tool
	args        []string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "echo-server" {
		if err := runEchoServer(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "stats-probe" {
		if err := runStatsProbe(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "klock-bench stats-probe:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "bound-holder" {
		if err := runBoundHolder(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "klock-bench bound-holder:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "flock-holder" {
		if err := runFlockHolder(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("klock-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	backends := fs.String("backends", "echo,flock,redis,klock", "back ends, comma separated: echo, flock, redis, redis-aof, klock, klock-conn (one connection per worker), klock-never, klock-everysec, klock-always (durable, temp state dir), klock-conn-everysec (both), klock-etcd (cluster mode: one node on one etcd member), klock-etcd3 (three nodes on three members), etcd-mutex (etcd's concurrency.Mutex on one member)")
	workloads := fs.String("workloads", "uncontended,contended,many-leases", "workloads, comma separated: uncontended, contended, many-leases, handoff (a parked waiter's grant after a release; klock only), stall (stats while a session of -session leases and waiters ends and every lease is paged; klock only)")
	workers := fs.String("w", "1,8,64", "worker counts, comma separated")
	cfg := config{args: args}
	fs.DurationVar(&cfg.duration, "d", 5*time.Second, "measured duration of each cell")
	fs.DurationVar(&cfg.warmup, "warmup", 0, "unmeasured warm-up before each cell (default d/10, at most 500ms)")
	fs.IntVar(&cfg.reps, "reps", 1, "repetitions of every cell, interleaved across back ends; the table shows medians")
	fs.IntVar(&cfg.leases, "leases", 100000, "leases held during the many-leases and stall workloads")
	fs.IntVar(&cfg.session, "session", 10000, "stall workload: leases of the session ended, each with a parked waiter")
	fs.StringVar(&cfg.stallBy, "stall-by", StallByEndSession, "stall workload: how the session ends: end_session, or exit (its leases are bound to a child process, which is killed)")
	fs.DurationVar(&cfg.releaseWait, "release-wait", 20*time.Second, "memory report: after the cells, release the held leases and watch klockd's RSS this long (0: no memory report)")
	fs.StringVar(&cfg.klockd, "klockd", "", "klockd binary (default: go build ./cmd/klockd into a temp dir)")
	fs.Func("compare", "TAG=PATH: run each klock back end of -backends (not the etcd ones) also on the klockd binary at PATH, as back end NAME-TAG, side by side in the same run (repeatable)", func(v string) error {
		c, err := parseCompare(v)
		cfg.compare = append(cfg.compare, c)
		return err
	})
	fs.StringVar(&cfg.jsonOut, "json", "", "write the results as JSON to this file")
	fs.StringVar(&cfg.mdOut, "md", "", "write the table, targets and peer settings as Markdown to this file (for BENCHMARKS.md)")
	fs.StringVar(&cfg.from, "from", "", "measure nothing: re-report the results in this JSON file (from -json) as table, -md, -plot")
	fs.StringVar(&cfg.plotOut, "plot", "", "write a plot of throughput and p99 by W to this file (.png or .svg)")
	fs.StringVar(&cfg.profile, "cpuprofile", "", "write a CPU profile of this tool (the client side, clientlib included) to this file")
	fs.StringVar(&cfg.trace, "trace", "", "write a runtime execution trace of this tool (the client side) to this file, from the first cell on; the stall probe's stats client, a process of its own, writes its trace to this file with .probe-N added; its stats calls are regions \"stats\" (go tool trace)")
	fs.BoolVar(&serverLogs, "server-logs", false, "copy the servers' output to stderr")
	fs.BoolVar(&cfg.short, "short", false, "CI mode: 1s cells, W=1,8, 2,000 held leases (explicit flags still win)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("klock-bench: unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.short {
		if !set["d"] {
			cfg.duration = time.Second
		}
		if !set["w"] {
			*workers = "1,8"
		}
		if !set["leases"] {
			cfg.leases = 2000
		}
		if !set["session"] {
			cfg.session = 1000
		}
		if !set["release-wait"] {
			cfg.releaseWait = time.Second
		}
	}
	if !set["warmup"] {
		cfg.warmup = min(cfg.duration/10, 500*time.Millisecond)
	}
	cfg.backends = splitList(*backends)
	cfg.workloads = splitList(*workloads)
	for _, b := range cfg.backends {
		if _, ok := backendMakers[b]; !ok {
			return cfg, fmt.Errorf("klock-bench: unknown back end %q (known: %s)", b, strings.Join(backendNames(), ", "))
		}
	}
	cfg.backends = withCompared(cfg.backends, cfg.compare)
	for _, wl := range cfg.workloads {
		if !slices.Contains(knownWorkloads, wl) {
			return cfg, fmt.Errorf("klock-bench: unknown workload %q (known: %s)", wl, strings.Join(knownWorkloads, ", "))
		}
	}
	for _, s := range splitList(*workers) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 4096 {
			return cfg, fmt.Errorf("klock-bench: -w %q: worker counts must be integers 1..4096", s)
		}
		cfg.workers = append(cfg.workers, n)
	}
	switch {
	case len(cfg.backends) == 0 || len(cfg.workloads) == 0 || len(cfg.workers) == 0:
		return cfg, errors.New("klock-bench: -backends, -workloads and -w must each name at least one")
	case cfg.duration <= 0 || cfg.reps < 1 || cfg.leases < 0 || cfg.session < 1 || cfg.releaseWait < 0:
		return cfg, errors.New("klock-bench: -d must be positive, -reps and -session at least 1, -leases and -release-wait not negative")
	case cfg.stallBy != StallByEndSession && cfg.stallBy != StallByExit:
		return cfg, fmt.Errorf("klock-bench: -stall-by %q: want %s or %s", cfg.stallBy, StallByEndSession, StallByExit)
	}
	return cfg, nil
}

// knownWorkloads are the -workloads names.
var knownWorkloads = []string{Uncontended, Contended, ManyLeases, Handoff, Stall}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// run starts every back end, runs every cell, and writes the reports.
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	if cfg.from != "" {
		res, err := readResults(cfg.from)
		if err != nil {
			return err
		}
		return res.report(cfg, stdout)
	}
	env := &runEnv{cfg: cfg, log: stderr}
	defer env.cleanup()
	// bs are the back ends; held[name] is a second instance of the same
	// back end holding cfg.leases leases, for the many-leases cells, so that
	// those interleave with the others instead of running last.
	var bs []Backend
	held := map[string]Backend{}
	defer func() {
		for _, b := range bs {
			if err := b.Close(); err != nil {
				fmt.Fprintf(stderr, "klock-bench: closing %s: %v\n", b.Name(), err)
			}
			if h := held[b.Name()]; h != nil {
				if err := h.Close(); err != nil {
					fmt.Fprintf(stderr, "klock-bench: closing %s (holding): %v\n", b.Name(), err)
				}
			}
		}
	}()
	var skipped []string
	for _, name := range cfg.backends {
		mk := backendMaker(cfg, name)
		b, err := mk(ctx, env)
		if err != nil {
			return err
		}
		bs = append(bs, b)
		if !contains(cfg.workloads, ManyLeases) && !contains(cfg.workloads, Stall) {
			continue
		}
		h, err := mk(ctx, env)
		if err != nil {
			return err
		}
		start := time.Now()
		err = h.Hold(ctx, cfg.leases)
		if errors.Is(err, errUnsupported) {
			h.Close()
			fmt.Fprintf(stderr, "klock-bench: %s: many-leases skipped: %v\n", name, err)
			skipped = append(skipped, fmt.Sprintf("%s many-leases: %v", name, err))
			continue
		}
		held[name] = h
		if err != nil {
			return fmt.Errorf("klock-bench: %s: holding %d leases: %w", name, cfg.leases, err)
		}
		fmt.Fprintf(stderr, "%-40s %d leases held in %v\n", name+"/hold", cfg.leases, time.Since(start).Round(time.Millisecond))
	}

	if cfg.profile != "" {
		f, err := os.Create(cfg.profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if cfg.trace != "" {
		stop, err := tracefile.Start(cfg.trace)
		if err != nil {
			return err
		}
		defer stop()
		probeTrace = cfg.trace
	}
	res := &Results{Machine: describeMachine(), Command: "klock-bench " + strings.Join(cfg.args, " "),
		Duration: cfg.duration.String(), Reps: cfg.reps, Leases: cfg.leases, Session: cfg.session, Settings: map[string]string{},
		StallBy: cfg.stallBy,
		Skipped: skipped}
	for _, b := range bs {
		res.Settings[b.Name()] = b.Settings()
	}
	measure := func(workload string, rep, w int, b Backend) error {
		var cell Cell
		var err error
		switch workload {
		case Handoff:
			if _, ok := b.(handoffBackend); !ok {
				return nil // no waiters in this back end's server
			}
			cell, err = runHandoffCell(ctx, b, w, cfg.duration, cfg.warmup)
		case Stall:
			sb, ok := b.(stallBackend)
			if !ok || w != cfg.workers[0] {
				return nil // klock only, once per repetition
			}
			cell, err = sb.Stall(ctx, rep, cfg.session, cfg.stallBy)
		default:
			cell, err = runCell(ctx, b, workload, w, cfg.duration, cfg.warmup)
		}
		cell.Rep = rep
		if err != nil {
			return fmt.Errorf("klock-bench: %s: %w", cell.label(), err)
		}
		if workload == Stall {
			fmt.Fprintf(stderr, "%-40s stats p50 %7.1fµs  p99 %8.1fµs  max %9.1fµs  paging %.2fs  %s %.2fs\n",
				cell.label(), cell.P50us, cell.P99us, cell.MaxUs, cell.PageSeconds, cfg.stallBy, cell.EndSeconds)
		} else {
			fmt.Fprintf(stderr, "%-40s %10.0f pairs/s  p50 %7.1fµs  p99 %8.1fµs\n", cell.label(), cell.PairsPerSec, cell.P50us, cell.P99us)
		}
		res.Cells = append(res.Cells, cell)
		return nil
	}
	// Cells that are compared are measured close together in time: the
	// back ends side by side, the workloads of one W next to each other.
	for rep := 1; rep <= cfg.reps; rep++ {
		for _, w := range cfg.workers {
			for _, wl := range cfg.workloads {
				for _, b := range bs {
					if wl == ManyLeases || wl == Stall {
						if b = held[b.Name()]; b == nil {
							continue
						}
					}
					if err := measure(wl, rep, w, b); err != nil {
						return err
					}
				}
			}
		}
	}

	if cfg.releaseWait > 0 {
		for _, b := range bs {
			if h := held[b.Name()]; h != nil {
				m, err := measureRelease(ctx, b, h, cfg.leases, cfg.releaseWait)
				if errors.Is(err, errUnsupported) {
					continue
				}
				if err != nil {
					return fmt.Errorf("klock-bench: %s: memory: %w", b.Name(), err)
				}
				fmt.Fprintf(stderr, "%-40s %.0f B/lease held; %.1f MiB -> %.1f MiB %v after the release\n", b.Name()+"/memory",
					m.BytesPerLease, float64(m.RSSHeld)/(1<<20), float64(m.RSSAfter)/(1<<20), cfg.releaseWait)
				res.Memory = append(res.Memory, m)
			}
		}
	}

	res.summarize(cfg)
	return res.report(cfg, stdout)
}

// report writes the table on stdout and the files the flags ask for.
func (r *Results) report(cfg config, stdout io.Writer) error {
	r.WriteTable(stdout)
	if cfg.jsonOut != "" {
		if err := r.WriteJSON(cfg.jsonOut); err != nil {
			return err
		}
	}
	if cfg.mdOut != "" {
		if err := r.WriteMarkdown(cfg.mdOut); err != nil {
			return err
		}
	}
	if cfg.plotOut != "" {
		if err := r.WritePlot(cfg.plotOut); err != nil {
			return err
		}
	}
	return nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// runEnv is what back-end constructors share: the configuration, the log,
// and resources built once per run (the klockd binary).
type runEnv struct {
	cfg      config
	log      io.Writer
	klockd   string // built or given klockd path
	buildDir string // temp dir of a built klockd, removed at the end
}

func (e *runEnv) cleanup() {
	if e.buildDir != "" {
		os.RemoveAll(e.buildDir)
	}
}

// backendMakers maps each -backends name to its constructor.
var backendMakers = map[string]func(context.Context, *runEnv) (Backend, error){
	"echo":      func(ctx context.Context, _ *runEnv) (Backend, error) { return newEchoBackend(ctx) },
	"flock":     func(context.Context, *runEnv) (Backend, error) { return newFlockBackend() },
	"redis":     func(ctx context.Context, _ *runEnv) (Backend, error) { return newRedisBackend(ctx, false) },
	"redis-aof": func(ctx context.Context, _ *runEnv) (Backend, error) { return newRedisBackend(ctx, true) },
	"klock": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockBackend(ctx, e, "klock", false, "")
	},
	"klock-conn": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockBackend(ctx, e, "klock-conn", true, "")
	},
	"klock-never": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockBackend(ctx, e, "klock-never", false, "never")
	},
	"klock-everysec": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockBackend(ctx, e, "klock-everysec", false, "everysec")
	},
	"klock-conn-everysec": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockBackend(ctx, e, "klock-conn-everysec", true, "everysec")
	},
	"klock-always": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockBackend(ctx, e, "klock-always", false, "always")
	},
	"klock-etcd": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockEtcdBackend(ctx, e, "klock-etcd", 1)
	},
	"klock-etcd3": func(ctx context.Context, e *runEnv) (Backend, error) {
		return newKlockEtcdBackend(ctx, e, "klock-etcd3", 3)
	},
	"etcd-mutex": func(context.Context, *runEnv) (Backend, error) { return newEtcdMutexBackend() },
}

func backendNames() []string {
	var names []string
	for n := range backendMakers {
		names = append(names, n)
	}
	sortStrings(names)
	return names
}
