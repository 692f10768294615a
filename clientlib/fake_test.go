package clientlib

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// fakeDaemon is an in-process stand-in for klockd, for unit tests only: it
// speaks the real framing and messages from protocol/ over a Unix socket and
// keeps a toy lease table (one holder per resource, Wait-Die by priority,
// idem keys) that survives Restart, like klockd's state directory. The real
// daemon is tested end to end in tests/.
type fakeDaemon struct {
	tb   testing.TB
	path string

	mu       sync.Mutex // guards the fields that follow
	hook     hookFunc
	maxFrame int  // announced by hello; 0 = the default
	refuse   bool // answer every new connection RESOURCE_EXHAUSTED (id 0) and close it
	refuseN  int  // as refuse, for the next refuseN connections only
	ln       net.Listener
	conns    map[net.Conn]bool
	requests int
	ops      map[string]int
	agents   map[string]int64
	leases   map[string]*fakeLease // by id
	byRes    map[string]string     // resource -> lease id
	idem     map[string]string     // agent + "\x00" + key -> lease id
	seq      int
	fence    uint64
	cond     *sync.Cond // signalled whenever requests or conns change
}

// hookFunc may answer a request itself (and return true); reply may be
// called later, from any goroutine, for a deferred answer, or never.
type hookFunc func(req *protocol.Request, reply func(result any, err *protocol.Error)) bool

func (f *fakeDaemon) setHook(h hookFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

// answerConcurrently makes f answer every request from its own goroutine,
// so answers come back out of order and interleaved.
func (f *fakeDaemon) answerConcurrently() {
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		go reply(f.handle(req))
		return true
	})
}

// blockingFake starts a fake daemon that withholds its answers to
// end_session requests whose session starts with "block", handing their
// reply functions to held, and dials it with opts.
func blockingFake(t *testing.T, opts Options) (f *fakeDaemon, c *Client, held <-chan func()) {
	t.Helper()
	f = newFakeDaemon(t)
	replies := make(chan func(), 100)
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		if !strings.HasPrefix(req.Args.SessionID, "block") {
			return false
		}
		res, perr := f.handle(req)
		replies <- func() { reply(res, perr) }
		return true
	})
	return f, dialFake(t, f, opts), replies
}

type fakeLease struct {
	id, agent, session, resource, predicate string
	expires, ttl                            int64
	fence                                   uint64
}

func newFakeDaemon(tb testing.TB) *fakeDaemon {
	tb.Helper()
	dir, err := os.MkdirTemp("", "klockfake")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeDaemon{
		tb: tb, path: filepath.Join(dir, "klockd.sock"),
		conns: map[net.Conn]bool{}, ops: map[string]int{}, agents: map[string]int64{},
		leases: map[string]*fakeLease{}, byRes: map[string]string{}, idem: map[string]string{},
	}
	f.cond = sync.NewCond(&f.mu)
	f.start()
	tb.Cleanup(f.stop)
	return f
}

func (f *fakeDaemon) start() {
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		f.tb.Fatal(err)
	}
	f.mu.Lock()
	f.ln = ln
	f.mu.Unlock()
	go f.accept(ln)
}

// stop closes the listener and every connection, as a killed daemon would.
func (f *fakeDaemon) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
		delete(f.conns, c)
	}
	f.cond.Broadcast()
}

// restart stops the daemon and starts it again on the same socket, keeping
// its lease table.
func (f *fakeDaemon) restart() {
	f.stop()
	os.Remove(f.path)
	f.start()
}

// waitForEndSessions blocks until f has seen n more end_session requests
// than when it was called.
func (f *fakeDaemon) waitForEndSessions(what string, n int) {
	f.tb.Helper()
	before := f.count(protocol.OpEndSession)
	f.waitFor(what, func() bool { return f.ops[protocol.OpEndSession] >= before+n })
}

// waitFor blocks until cond (evaluated under f.mu) holds, or fails the test
// after 10 s.
func (f *fakeDaemon) waitFor(what string, cond func() bool) {
	f.tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	timer := time.AfterFunc(10*time.Second, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer timer.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !cond() {
		if time.Now().After(deadline) {
			f.tb.Fatalf("timed out waiting for %s", what)
		}
		f.cond.Wait()
	}
}

func (f *fakeDaemon) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.ln != ln {
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[c] = true
		f.cond.Broadcast()
		f.mu.Unlock()
		go f.serve(c)
	}
}

func (f *fakeDaemon) serve(c net.Conn) {
	defer func() {
		c.Close()
		f.mu.Lock()
		delete(f.conns, c)
		f.cond.Broadcast()
		f.mu.Unlock()
	}()
	var wmu sync.Mutex
	write := func(frame []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		c.Write(frame)
	}
	f.mu.Lock()
	refuse := f.refuse || f.refuseN > 0
	f.refuseN = max(f.refuseN-1, 0)
	f.mu.Unlock()
	if refuse {
		write(protocol.AppendError(nil, 0, protocol.CodeResourceExhausted, "klock: too many connections; the daemon allows 1"))
		return
	}
	br := bufio.NewReader(c)
	var buf []byte
	for {
		body, err := protocol.ReadFrame(br, buf, protocol.DefaultMaxFrame)
		if err != nil {
			return
		}
		req := new(protocol.Request)
		if err := protocol.DecodeRequest(body, req); err != nil {
			var pe *protocol.Error
			errors.As(err, &pe)
			write(protocol.AppendError(nil, req.ID, pe.Code, pe.Message))
			continue
		}
		f.mu.Lock()
		f.requests++
		f.ops[req.Op]++
		f.cond.Broadcast()
		hook := f.hook
		f.mu.Unlock()
		id := req.ID
		reply := func(result any, perr *protocol.Error) {
			if perr != nil {
				write(protocol.AppendError(nil, id, perr.Code, perr.Message))
				return
			}
			frame, err := protocol.AppendResult(nil, id, result)
			if err != nil {
				panic(err)
			}
			write(frame)
		}
		if hook != nil && hook(req, reply) {
			continue
		}
		reply(f.handle(req))
	}
}

func (f *fakeDaemon) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops[op]
}

// handle is the toy engine.
func (f *fakeDaemon) handle(req *protocol.Request) (any, *protocol.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := &req.Args
	now := time.Now().UnixMilli()
	switch req.Op {
	case protocol.OpHello:
		mf := f.maxFrame
		if mf == 0 {
			mf = protocol.DefaultMaxFrame
		}
		return protocol.HelloResult{Server: "fake", Protocol: protocol.Version, PID: os.Getpid(), MaxFrame: mf}, nil
	case protocol.OpRegisterAgent:
		p, ok := f.agents[a.AgentID]
		if !ok || a.Has(protocol.ArgPriority) {
			p = a.Priority
			f.agents[a.AgentID] = p
		}
		return protocol.RegisterResult{AgentID: a.AgentID, Priority: p, RegisteredAt: now}, nil
	case protocol.OpAcquire:
		if _, ok := f.agents[a.AgentID]; !ok {
			return nil, protocol.Errorf(protocol.CodeUnknownAgent, "klock: agent %q is not registered", a.AgentID)
		}
		if a.TTL <= 0 {
			return nil, protocol.Errorf(protocol.CodeInvalidArgument, "klock: argument ttl must be at least 1 ms")
		}
		if id, ok := f.idem[a.AgentID+"\x00"+a.Idem]; ok && f.leases[id] != nil {
			return f.leases[id].grant(), nil
		}
		res := a.ResourceType + ":" + a.ResourcePath
		if hid, ok := f.byRes[res]; ok {
			h := f.leases[hid]
			if h.expires > now {
				reason := protocol.ReasonDie
				if f.agents[a.AgentID] < f.agents[h.agent] {
					reason = protocol.ReasonWait
				}
				return protocol.Denial{Reason: reason, WaitTime: min(1000, max(1, h.expires-now)), HeldBy: h.agent,
					Message: "held"}, nil
			}
			delete(f.leases, hid)
		}
		f.seq++
		f.fence++
		l := &fakeLease{id: fmt.Sprintf("lease-%d", f.seq), agent: a.AgentID, session: a.SessionID,
			resource: res, predicate: a.Predicate, expires: now + a.TTL, ttl: a.TTL, fence: f.fence}
		f.leases[l.id] = l
		f.byRes[res] = l.id
		if a.Idem != "" {
			f.idem[a.AgentID+"\x00"+a.Idem] = l.id
		}
		return l.grant(), nil
	case protocol.OpRelease, protocol.OpRevoke:
		l, ok := f.leases[a.LeaseID]
		if ok {
			delete(f.leases, l.id)
			delete(f.byRes, l.resource)
		}
		if req.Op == protocol.OpRevoke {
			return protocol.RevokeResult{Revoked: ok}, nil
		}
		return protocol.ReleaseResult{Released: ok}, nil
	case protocol.OpHeartbeat:
		l, ok := f.leases[a.LeaseID]
		if !ok || l.expires <= now {
			return nil, protocol.Errorf(protocol.CodeNotFound, "klock: lease %s is not active", a.LeaseID)
		}
		if a.TTL > 0 {
			l.ttl = a.TTL
		}
		l.expires = now + l.ttl
		return protocol.HeartbeatResult{LeaseID: l.id, ExpiresAt: l.expires}, nil
	case protocol.OpActiveLeaseCount:
		n := 0
		for _, l := range f.leases {
			if l.expires > now {
				n++
			}
		}
		return protocol.CountResult{Count: n}, nil
	case protocol.OpListLeases:
		// Echo-ish: one lease whose resource is the prefix asked for.
		return protocol.ListLeasesResult{Leases: []protocol.LeaseInfo{{Resource: a.ResourcePrefix}}}, nil
	case protocol.OpEndSession:
		// Echo-ish: answers with the length of the session id, so tests can
		// check each answer reached the call that asked.
		return protocol.EndSessionResult{Released: len(a.SessionID)}, nil
	}
	return nil, protocol.Errorf(protocol.CodeUnknownOp, "klock: unknown op %q", req.Op)
}

func (l *fakeLease) grant() protocol.Grant {
	return protocol.Grant{Success: true, LeaseID: l.id, AgentID: l.agent, SessionID: l.session,
		Resource: l.resource, Predicate: l.predicate, AcquiredAt: l.expires - 1, ExpiresAt: l.expires, Fence: l.fence}
}
