package cluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// ErrUnavailable means the node cannot reach an etcd quorum: the command
// was not sent (Propose) or the read cannot be made current (Barrier).
var ErrUnavailable = errors.New("klock: no etcd quorum reachable; nothing was changed")

// ErrUncertain means a command was sent but the node could not see it
// applied before the quorum (or the node's view of it) was lost: it may
// still take effect.
var ErrUncertain = errors.New("klock: the etcd quorum was lost while this change was in flight; it may still take effect")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("klock: cluster node closed")

// Node is one klockd's membership of a cluster: its etcd client and
// session, the proposer, the log follower and, when elected, the leader's
// work. Create it with Start.
type Node struct {
	cfg    Config
	log    *slog.Logger
	cli    *clientv3.Client
	keys   keys
	sm     StateMachine
	secret []byte // from meta: seeds entries

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// sessMu guards the session and the owner id derived from it.
	sessMu  sync.Mutex
	session *concurrency.Session
	owner   string
	sessCh  chan struct{} // closed when a new session is set

	prop proposer

	// applyMu is held while entries are applied and while a snapshot is
	// taken, so a snapshot falls between two batches. It guards applied
	// and clock.
	applyMu   sync.Mutex
	applied   atomic.Int64 // revision of the last batch applied (or snapshot loaded)
	clock     int64        // time of the last entry applied
	sinceSnap int          // commands applied since the last snapshot was written or loaded

	// progMu guards progress, closed and replaced when applied moves.
	progMu   sync.Mutex
	progress chan struct{}

	health health
	reads  barrier

	leading atomic.Bool
}

// Start connects to etcd, checks the cluster's settings (storing them if
// this is the first node), starts a session, loads the current state
// (snapshot, then the log after it) and starts following the log. It
// returns once the node's state machine is current, or an error that says
// what is wrong (etcd unreachable, settings that differ, TLS).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.Timeout,
		DialKeepAliveTime:    cfg.SessionTTL,
		DialKeepAliveTimeout: cfg.Timeout,
		TLS:                  cfg.TLS,
		Logger:               zap.NewNop(),
		AutoSyncInterval:     0,
		RejectOldCluster:     false,
	})
	if err != nil {
		return nil, fmt.Errorf("klock: etcd client for %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.NodeID),
		cli:      cli,
		keys:     newKeys(cfg.Prefix),
		sm:       cfg.StateMachine,
		sessCh:   make(chan struct{}),
		progress: make(chan struct{}),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.health.init()
	n.prop.init(n)
	n.reads.n = n
	if err := n.start(ctx); err != nil {
		n.cancel()
		cli.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	where := strings.Join(n.cfg.Endpoints, ",")
	if err := n.loadMeta(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("klock: etcd at %s did not answer within %s (is it running and does it have a quorum? are the URLs and TLS files right?): %w", where, n.cfg.Timeout, err)
		}
		return fmt.Errorf("klock: etcd at %s: %w", where, err)
	}
	if err := n.waitPredecessor(ctx); err != nil {
		return err
	}
	if err := n.newSession(ctx); err != nil {
		return fmt.Errorf("klock: etcd at %s: starting a session: %w", where, err)
	}
	rev, err := n.catchUp(ctx)
	if err != nil {
		return fmt.Errorf("klock: etcd at %s: loading the lock table: %w", where, err)
	}
	n.log.Info("joined the cluster", "etcd", where, "prefix", n.cfg.Prefix, "owner", n.Owner(), "revision", n.applied.Load())
	n.goRun(func() { n.follow(rev) })
	n.goRun(n.prop.run)
	n.goRun(n.keepSession)
	n.goRun(n.campaign)
	n.goRun(n.probe)
	return n.dropPreviousSelf(ctx)
}

// dropPreviousSelf drops what this node's previous incarnation (before a
// crash or restart) owned, before the node serves: its clients resend what
// was parked there (with their idem keys), and a parked request of the old
// incarnation must not be granted to nobody meanwhile.
func (n *Node) dropPreviousSelf(ctx context.Context) error {
	me := n.Owner()
	for _, o := range n.sm.Owners() {
		if o == me || OwnerNode(o) != n.cfg.NodeID {
			continue
		}
		done := make(chan error, 1)
		n.Propose(KindDropOwner, []byte(o), nil, func(_ any, err error) { done <- err })
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("klock: dropping what this node owned before it restarted: %w", err)
			}
			n.log.Info("dropped what this node owned before it restarted", "owner", o)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// OwnerNode returns the node id of an owner id ("<node-id>.<session>").
func OwnerNode(owner string) string {
	if i := strings.LastIndexByte(owner, '.'); i >= 0 {
		return owner[:i]
	}
	return owner
}

func (n *Node) goRun(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// Close leaves the cluster: it stops proposing and following, answers
// commands still in flight with ErrUnavailable, ends the node's etcd
// session (so the leader drops what only this node could end) and closes
// the client. It waits at most ctx for etcd.
func (n *Node) Close(ctx context.Context) error {
	n.cancel()
	n.prop.close()
	n.wg.Wait()
	n.sessMu.Lock()
	s := n.session
	n.sessMu.Unlock()
	var err error
	if s != nil {
		rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
		_, err = n.cli.Revoke(rctx, s.Lease())
		cancel()
		s.Orphan()
	}
	n.cli.Close()
	return err
}

// Owner returns this node's current owner id: its node id and the etcd
// lease of its session, which changes when a lapsed session is replaced.
func (n *Node) Owner() string {
	n.sessMu.Lock()
	defer n.sessMu.Unlock()
	return n.owner
}

// Applied returns the revision of the last batch this node applied.
func (n *Node) Applied() int64 { return n.applied.Load() }

// Leading reports whether this node is the elected leader.
func (n *Node) Leading() bool { return n.leading.Load() }

// Client returns the node's etcd client (tests and tools).
func (n *Node) Client() *clientv3.Client { return n.cli }

// meta is the cluster's record under <prefix>meta, written once by the
// first node.
type meta struct {
	Version  int               `msgpack:"v"`
	Secret   []byte            `msgpack:"s"`
	Settings map[string]string `msgpack:"set"`
	Created  int64             `msgpack:"at"`
	By       string            `msgpack:"by"`
}

const metaVersion = 1

// loadMeta creates the cluster's meta record or reads it, and checks that
// this node's settings match.
func (n *Node) loadMeta(ctx context.Context) error {
	secret := make([]byte, 32)
	rand.Read(secret)
	mine := &meta{Version: metaVersion, Secret: secret, Settings: n.cfg.Settings, Created: n.cfg.Now().UnixMilli(), By: n.cfg.NodeID}
	b, err := msgpack.Marshal(mine)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	resp, err := n.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(n.keys.meta()), "=", 0)).
		Then(clientv3.OpPut(n.keys.meta(), string(b))).
		Else(clientv3.OpGet(n.keys.meta())).
		Commit()
	if err != nil {
		return err
	}
	if resp.Succeeded {
		n.secret = secret
		n.log.Info("created a new cluster", "prefix", n.cfg.Prefix)
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return errors.New("klock: the cluster's meta record vanished while it was read; retry")
	}
	var m meta
	if err := msgpack.Unmarshal(kvs[0].Value, &m); err != nil || m.Version != metaVersion || len(m.Secret) == 0 {
		return fmt.Errorf("klock: %s does not hold a klock cluster record this klockd can read (version %d); is the prefix shared with something else?", n.keys.meta(), m.Version)
	}
	if diff := settingsDiff(n.cfg.Settings, m.Settings); diff != "" {
		return fmt.Errorf("klock: this klockd's settings differ from the cluster's (created by node %s): %s; every node must run with the same limits", m.By, diff)
	}
	n.secret = m.Secret
	return nil
}

// settingsDiff describes where mine and theirs differ, or returns "".
func settingsDiff(mine, theirs map[string]string) string {
	names := slices.Sorted(maps.Keys(mine))
	for k := range theirs {
		if _, ok := mine[k]; !ok {
			names = append(names, k)
		}
	}
	var out []string
	for _, k := range names {
		a, okA := mine[k]
		b, okB := theirs[k]
		switch {
		case okA && okB && a == b:
		case !okB:
			out = append(out, fmt.Sprintf("%s is %s here and unset in the cluster", k, a))
		case !okA:
			out = append(out, fmt.Sprintf("%s is unset here and %s in the cluster", k, b))
		default:
			out = append(out, fmt.Sprintf("%s is %s here and %s in the cluster", k, a, b))
		}
	}
	return strings.Join(out, "; ")
}

// newSession starts an etcd session and announces this node under it.
func (n *Node) newSession(ctx context.Context) error {
	s, err := concurrency.NewSession(n.cli, concurrency.WithTTL(int(n.cfg.SessionTTL/time.Second)), concurrency.WithContext(n.ctx))
	if err != nil {
		return err
	}
	owner := n.cfg.NodeID + "." + strconv.FormatInt(int64(s.Lease()), 16)
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	if _, err := n.cli.Put(rctx, n.keys.node(n.cfg.NodeID), owner, clientv3.WithLease(s.Lease())); err != nil {
		s.Orphan()
		return err
	}
	n.sessMu.Lock()
	n.session, n.owner = s, owner
	close(n.sessCh)
	n.sessCh = make(chan struct{})
	n.sessMu.Unlock()
	return nil
}

// waitPredecessor waits, when another session announces this node id, for
// that session to lapse: a klockd killed a moment ago has stopped renewing
// it, and it lapses within the session ttl. One still alive after that is
// renewed by a klockd still running under the same node id, and this one
// refuses to start: two nodes under one id would drop each other's parked
// requests.
func (n *Node) waitPredecessor(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	resp, err := n.cli.Get(rctx, n.keys.node(n.cfg.NodeID))
	cancel()
	if err != nil {
		return fmt.Errorf("klock: etcd: reading %s: %w", n.keys.node(n.cfg.NodeID), err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	other, lease := string(resp.Kvs[0].Value), clientv3.LeaseID(resp.Kvs[0].Lease)
	n.log.Info("waiting for the previous session of this node id to lapse", "owner", other, "up_to", n.cfg.SessionTTL)
	// etcd checks for lapsed leases about every half second.
	deadline := time.Now().Add(n.cfg.SessionTTL + 2*time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
		ttl, err := n.cli.TimeToLive(rctx, lease)
		cancel()
		if err != nil {
			return fmt.Errorf("klock: etcd: checking the session of %s: %w", other, err)
		}
		// TTL is whole seconds left, rounded down: 0 is still alive;
		// a lapsed or revoked lease is -1.
		if ttl.TTL < 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("klock: node id %q is in use by a running klockd (its session %s is still renewed after %s); give each klockd its own --node-id", n.cfg.NodeID, other, n.cfg.SessionTTL)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// currentSession returns the session and a channel closed when it is
// replaced.
func (n *Node) currentSession() (*concurrency.Session, <-chan struct{}) {
	n.sessMu.Lock()
	defer n.sessMu.Unlock()
	return n.session, n.sessCh
}

// keepSession replaces the session when it lapses (etcd unreachable for
// longer than its ttl): the node then has a new owner id, and the leader
// drops what the old one owned.
func (n *Node) keepSession() {
	for {
		s, _ := n.currentSession()
		select {
		case <-n.ctx.Done():
			return
		case <-s.Done():
		}
		n.log.Warn("etcd session lapsed; starting a new one", "owner", n.Owner())
		n.health.fail(errors.New("the etcd session lapsed"))
		for n.ctx.Err() == nil {
			if err := n.newSession(n.ctx); err == nil {
				n.log.Info("new etcd session", "owner", n.Owner())
				break
			} else {
				n.log.Debug("starting an etcd session failed", "err", err)
			}
			n.sleep(time.Second)
		}
	}
}

// sleep waits d or until the node closes; it reports whether it is still
// open.
func (n *Node) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-n.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (n *Node) nowMS() int64 { return n.cfg.Now().UnixMilli() }
