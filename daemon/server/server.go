package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/protocol"
)

// Defaults for the limits in Config.
const (
	DefaultMaxConns     = 4096
	DefaultMaxInflight  = 1024
	DefaultMaxOutbound  = 4 << 20 // bytes of unsent responses per connection
	DefaultWriteTimeout = 10 * time.Second
)

// ErrServerClosed is returned by Serve after Shutdown or Close. After a
// panic while changing state, Serve returns a *PanicError instead.
var ErrServerClosed = errors.New("klock: server closed")

// Journal makes state changes durable before they are acknowledged.
// Append is called under the engine lock with the records of one operation
// and returns a sequence number; Wait blocks until every record up to seq
// has been written, and is called once per batch of responses before they
// are sent (group commit). A Wait error means the records may be lost: the
// connection is closed instead of acknowledging them.
type Journal interface {
	Append(recs []engine.Record) (seq uint64)
	Wait(seq uint64) error
}

// Config configures a Server. Engine is required; zero limits take the
// defaults above.
type Config struct {
	Engine       *engine.Engine
	Journal      Journal // nil: state lives in memory only
	Version      string  // reported by hello as "klockd <Version>"
	MaxFrame     int     // largest frame body accepted; 0 = protocol.DefaultMaxFrame
	MaxConns     int     // open connections; 0 = DefaultMaxConns
	MaxInflight  int     // requests awaiting an answer per connection; 0 = DefaultMaxInflight
	MaxOutbound  int     // unsent response bytes per connection; 0 = DefaultMaxOutbound
	WriteTimeout time.Duration
	MaxPidfds    int          // processes watched for bound leases (a pidfd each); 0 = no limit
	WatchBuffer  int          // events a watch may fall behind before it is cut off; 0 = DefaultWatchBuffer
	MaxWatches   int          // watch streams open at once (socket and HTTP); 0 = DefaultMaxWatches
	Logger       *slog.Logger // nil = slog.Default(); whether it logs at debug level is read once, by New
	Clock        Clock        // nil = SystemClock()
	// OnDegraded, when set, is called when the server starts refusing
	// changes because the journal cannot make them durable (with the
	// fault) and when it accepts them again (with nil); never under a lock.
	OnDegraded func(*store.Fault)
	// ObserveRequest, when set, is told how long serving each decoded
	// request took (decoding to its answer queued; an unknown op as the
	// client named it). It must be cheap and safe for concurrent use.
	ObserveRequest func(op string, d time.Duration)
}

// Server serves the klock protocol on any number of listeners.
type Server struct {
	cfg       Config
	log       *slog.Logger
	clock     Clock
	startedAt time.Time     // Clock.Wall at start
	startMono time.Duration // Clock.Mono at start
	startNS   int64         // startedAt in Unix ns: the engine's time at start

	// logRequests says log logs at debug level, where every request is
	// logged: asked once, by New, rather than per request.
	logRequests bool

	ops       atomic.Uint64             // requests answered on connections since closed (opsTotal)
	nconns    atomic.Int64              // open connections
	shutting  atomic.Bool               // Shutdown or Close has begun
	broken    atomic.Pointer[stopCause] // memory may not match the log: stopped (panic.go)
	stopc     chan struct{}             // closed when shutdown begins
	reclaim   sync.Once                 // starts reclaimLoop on the first Serve
	stopOnce  sync.Once
	healWG    sync.WaitGroup // the heal loop (degraded.go)
	connsDone sync.WaitGroup

	// pol watches connections for peer shutdowns (poller.go), made at the
	// first connection; polStop is set once it has been stopped, or could
	// not be made. Guarded by polMu.
	polMu   sync.Mutex
	pol     *hupPoller
	polStop bool

	// steps and listSteps size the holds of mu by long changes and by
	// list ops (stepsize.go).
	steps, listSteps stepSizer

	// mu guards the engine and the fields that follow; requests take it
	// through turns.
	turns     turns
	mu        sync.Mutex
	eng       *engine.Engine
	waiters   map[engine.WaiterID]waiter
	lastSeq   uint64        // journal sequence of the last state change
	fj        faultyJournal // the journal, when it can fail and heal (degraded.go)
	fault     *store.Fault  // the journal fault in effect; nil when healthy
	healing   bool          // the heal loop runs
	totals    engine.Stats  // totals of engines replaced by a rollback
	timer     *time.Timer   // fires at armed, the engine's next deadline
	armed     int64         // Unix ms the timer is set for; 0 = not set
	expiring  bool          // onTimer runs steps of a large expiry
	procs     *procWatcher  // the processes leases are bound to (procwatch.go)
	closed    bool
	rep       replicated      // cluster mode (replica.go); rep.log is nil on a single daemon
	subs      []*Subscription // open watch streams; the engine builds events while there are any
	nextWatch int64           // last watch id given

	// aj is the journal when its writer sends answers (answer.go); listMu
	// guards listed, the connections whose answers wait for its rounds,
	// and listSpare, a slice to swap in.
	aj        answeringJournal
	listMu    sync.Mutex
	listed    []*conn
	listSpare []*conn

	// lnMu guards the listeners and connections.
	lnMu  sync.Mutex
	lns   map[net.Listener]struct{}
	conns map[*conn]struct{}
}

// waiter is a parked acquire: its connection, request id and shape.
type waiter struct {
	c    *conn
	id   uint64
	many bool
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = protocol.DefaultMaxFrame
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.MaxOutbound <= 0 {
		cfg.MaxOutbound = DefaultMaxOutbound
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = DefaultWatchBuffer
	}
	if cfg.MaxWatches <= 0 {
		cfg.MaxWatches = DefaultMaxWatches
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock()
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		clock:   cfg.Clock,
		eng:     cfg.Engine,
		waiters: make(map[engine.WaiterID]waiter),
		procs:   newProcWatcher(cfg.MaxPidfds),
		lns:     make(map[net.Listener]struct{}),
		conns:   make(map[*conn]struct{}),
		stopc:   make(chan struct{}),
	}
	s.logRequests = cfg.Logger.Enabled(context.Background(), slog.LevelDebug)
	s.steps.max, s.listSteps.max = stepWork, listWork
	s.fj, _ = cfg.Journal.(faultyJournal)
	if aj, ok := cfg.Journal.(answeringJournal); ok {
		s.aj = aj
		aj.OnRound(s.answerDurable)
	}
	s.startedAt, s.startMono = cfg.Clock.Wall(), cfg.Clock.Mono()
	s.startNS = s.startedAt.UnixNano()
	s.timer = time.AfterFunc(time.Hour, s.onTimer)
	s.timer.Stop()
	s.mu.Lock()
	// Leases recovered from the store may be bound to processes that
	// ended meanwhile (their ends are recorded now, before serving), and
	// may already have deadlines.
	s.syncWatchesLocked("start")
	s.armLocked(s.nowMS())
	s.mu.Unlock()
	return s
}

// Serve accepts connections on ln and serves each on its own goroutine
// until Shutdown or Close, when it returns ErrServerClosed; other accept
// errors are returned as they are. When ctx ends, Serve starts a graceful
// Shutdown bounded by five seconds. Serve may be called for several
// listeners; each is closed when Serve returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.reclaim.Do(func() { go s.reclaimLoop() })
	s.lnMu.Lock()
	if s.shutting.Load() {
		s.lnMu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.lnMu.Unlock()
	defer func() {
		s.lnMu.Lock()
		delete(s.lns, ln)
		s.lnMu.Unlock()
		ln.Close()
	}()

	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(sctx)
	})
	defer stop()

	var backoff time.Duration
	var warned time.Time // last WARN about failing accepts
	failed := 0          // accepts failed since that WARN
	for {
		nc, err := ln.Accept()
		if err != nil {
			if b := s.broken.Load(); b != nil {
				return b.err
			}
			if s.shutting.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of descriptors and the like: wait, do not spin, and
				// say so at most once a minute, not once a retry.
				if failed++; time.Since(warned) >= time.Minute {
					s.log.Warn("accepting connections fails; new connections wait until it works (retrying up to every second)",
						"err", err, "failures", failed)
					warned, failed = time.Now(), 0
				}
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		uc, ok := nc.(*net.UnixConn)
		if !ok {
			s.log.Warn("refusing a connection that is not a Unix socket", "remote", nc.RemoteAddr())
			nc.Close()
			continue
		}
		s.accept(uc)
	}
}

// isTemporary reports whether an accept error is worth retrying.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// accept registers a new connection and starts its reader, or refuses it
// with RESOURCE_EXHAUSTED when MaxConns connections are open.
func (s *Server) accept(uc *net.UnixConn) {
	if s.nconns.Add(1) > int64(s.cfg.MaxConns) {
		s.nconns.Add(-1)
		s.log.Warn("connection refused: too many connections", "max_conns", s.cfg.MaxConns)
		msg := "klock: too many connections; the daemon allows " + itoa(s.cfg.MaxConns)
		uc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		uc.Write(protocol.AppendError(nil, 0, protocol.CodeResourceExhausted, msg))
		uc.Close()
		return
	}
	peer, err := peerCred(uc)
	if err != nil {
		s.nconns.Add(-1)
		s.log.Warn("connection refused: no peer credentials", "err", err)
		uc.Close()
		return
	}
	c := newConn(s, uc, peer)
	s.lnMu.Lock()
	if s.shutting.Load() {
		s.lnMu.Unlock()
		s.nconns.Add(-1)
		uc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.connsDone.Add(1)
	s.lnMu.Unlock()
	s.log.Debug("connection opened", "uid", peer.UID, "pid", peer.PID)
	go c.serve()
}

// forget removes a finished connection.
func (s *Server) forget(c *conn) {
	s.lnMu.Lock()
	s.ops.Add(c.answered.Load()) // c appends no more answers: it is dead
	delete(s.conns, c)
	s.lnMu.Unlock()
	s.nconns.Add(-1)
	s.connsDone.Done()
}

// opsTotal is the count of requests answered: on the connections closed,
// and on those open. Each connection counts its own, so that no counter is
// written by every request; lnMu makes a closing connection's count move
// to s.ops at once, so the total never goes back.
func (s *Server) opsTotal() uint64 {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	n := s.ops.Load()
	for c := range s.conns {
		n += c.answered.Load()
	}
	return n
}

// Shutdown stops the server gracefully: it stops accepting, answers every
// parked acquire SHUTTING_DOWN, lets each connection finish the requests it
// has already read (answering any later ones SHUTTING_DOWN), sends what is
// pending and closes it. It returns when every connection is closed, or
// closes the rest at once and returns ctx.Err() when ctx ends first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginShutdown()

	// Parked acquires are answered now; nothing will wake them later. After
	// a panic the engine is not touched again: they are answered from the
	// server's own table.
	s.mu.Lock()
	if s.broken.Load() == nil && s.rep.log == nil {
		// In cluster mode the engine is the cluster's: the leader drops
		// this node's requests once its etcd session ends.
		s.eng.CancelAll(s.nowMS())
	}
	for id, w := range s.waiters {
		delete(s.waiters, id)
		w.c.dropWaiterLocked(id)
		w.c.appendError(w.id, errShuttingDown.Code, errShuttingDown.Message, s.lastSeq)
		w.c.kick()
	}
	s.closed = true
	s.timer.Stop()
	watchDone := s.procs.shutdownLocked()
	s.endSubscriptionsLocked()
	s.mu.Unlock()
	if watchDone != nil {
		<-watchDone
	}

	// Half-close each connection: its reader serves what it has already
	// received, then sees end of stream, flushes and closes.
	s.lnMu.Lock()
	for c := range s.conns {
		c.nc.CloseRead()
	}
	s.lnMu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connsDone.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.healWG.Wait()
		s.stopHupPoller()
		return nil
	case <-ctx.Done():
		s.closeConns()
		<-done
		s.healWG.Wait()
		s.stopHupPoller()
		return ctx.Err()
	}
}

// Close stops the server at once: listeners and connections are closed
// without answering parked acquires. It waits for connection goroutines.
func (s *Server) Close() error {
	s.beginShutdown()
	s.mu.Lock()
	s.closed = true
	s.timer.Stop()
	watchDone := s.procs.shutdownLocked()
	s.endSubscriptionsLocked()
	s.mu.Unlock()
	if watchDone != nil {
		<-watchDone
	}
	s.closeConns()
	s.connsDone.Wait()
	s.healWG.Wait()
	s.stopHupPoller()
	return nil
}

// beginShutdown marks the server as stopping and closes its listeners.
func (s *Server) beginShutdown() {
	s.stopOnce.Do(func() { close(s.stopc) })
	s.lnMu.Lock()
	s.shutting.Store(true)
	for ln := range s.lns {
		ln.Close()
	}
	s.lnMu.Unlock()
}

// closeConns closes every open connection.
func (s *Server) closeConns() {
	s.lnMu.Lock()
	for c := range s.conns {
		c.sk.Close()
	}
	s.lnMu.Unlock()
}

// Connections returns the number of open connections.
func (s *Server) Connections() int { return int(s.nconns.Load()) }

// itoa formats n without fmt on hot paths.
func itoa(n int) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

var pid = os.Getpid()
