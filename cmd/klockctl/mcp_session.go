package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// mcpSession is the klock side of one MCP server process: one connection to
// klockd, one agent, one session, and the leases its tools took, which it
// renews until they are released or the server exits.
type mcpSession struct {
	a         *app
	socket    string // --socket or $KLOCK_SOCKET; "" finds (or starts) klockd
	cwd       string // where relative paths are resolved
	agentName string // --agent or $KLOCK_AGENT; "" builds one from the client's name
	priority  *int64
	session   string

	// mu guards the fields that follow. It is never held across a request
	// to klockd.
	mu      sync.Mutex
	c       *clientlib.Client
	agent   string // the agent acted as, once registered
	fresh   bool   // the agent was built here, so it is unregistered at exit
	held    map[string]*heldLease
	lost    []mcpLease // leases whose renewal failed, for klock_status
	wake    chan struct{}
	stopped chan struct{} // closed when the renewer has returned
	closing bool
}

// heldLease is a lease the session took and renews.
type heldLease struct {
	mcpLease
	ttl     time.Duration
	renewAt time.Time
}

// mcpCallTimeout bounds one tool call's requests to klockd (a wait adds
// its own length): with klockd gone, a call fails rather than hangs.
const mcpCallTimeout = 10 * time.Second

// client returns the connection to klockd, dialling on first use. The
// connection reconnects on its own, so a restarted klockd keeps the
// session's leases (and their renewal) going.
func (s *mcpSession) client(ctx context.Context) (*clientlib.Client, error) {
	s.mu.Lock()
	c := s.c
	s.mu.Unlock()
	if c != nil {
		return c, nil
	}
	// Dial may start klockd on first use; its one line goes to stderr, which
	// MCP clients log: stdout carries the protocol. A tool call retries a
	// change klockd cannot make durable (UNAVAILABLE) as a one-shot command
	// does, then tells the model so, rather than hold the call.
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: s.socket, ClientName: "klockctl-mcp/" + version(),
		NoAutostart: clientlib.AutostartDisabled(s.a.getenv), Stderr: s.a.stderr, UnavailableWait: oneShotUnavailableWait})
	if err != nil {
		return nil, unreachableError(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		c.Close()
		return nil, errors.New("the MCP server is shutting down")
	}
	if s.c != nil { // another call dialled meanwhile
		c.Close()
		return s.c, nil
	}
	s.c = c
	return c, nil
}

// ensureAgent registers the session's agent if it is not yet, naming it
// after the MCP client when no name was given, and returns it.
func (s *mcpSession) ensureAgent(ctx context.Context, c *clientlib.Client, clientName string) (string, error) {
	s.mu.Lock()
	agent := s.agent
	s.mu.Unlock()
	if agent != "" {
		return agent, nil
	}
	agent, fresh := s.agentName, false
	if agent == "" {
		agent, fresh = agentNameFor(clientName), true
	}
	r, err := c.Register(ctx, agent, s.priority)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agent, s.fresh = agent, fresh
	s.sayAgent(r)
	return agent, nil
}

// sayAgent logs, on stderr (which MCP clients keep as the server's log),
// the agent this server acts as and its priority, and where the priority
// came from: protocol/README.md "Unregistered agents" has tools say so.
func (s *mcpSession) sayAgent(r *protocol.RegisterResult) {
	from := "given by --priority"
	if s.priority == nil {
		from = fmt.Sprintf("klockd's registration time unless the agent was registered before: it yields to every agent "+
			"registered before it (to choose: --priority N, or klockctl agents register %s --priority N)", oneLine(r.AgentID))
	}
	fmt.Fprintf(s.a.stderr, "klockctl mcp: acting as agent %s, priority %d, %s\n", oneLine(r.AgentID), r.Priority, from)
}

// agentNameFor builds an agent id from the MCP client's name and this
// process's pid: "claude-code-4242".
func agentNameFor(clientName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(clientName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
		if b.Len() >= 64 {
			break
		}
	}
	name := strings.Trim(b.String(), "-")
	if name == "" {
		name = "mcp"
	}
	return name + "-" + strconv.Itoa(os.Getpid())
}

// withAgent runs call with the connection and the registered agent. When
// klockd forgot the agent (it restarted without its state), the agent is
// registered again and call retried once.
func (s *mcpSession) withAgent(ctx context.Context, clientName string, call func(c *clientlib.Client, agent string) error) error {
	c, err := s.client(ctx)
	if err != nil {
		return err
	}
	agent, err := s.ensureAgent(ctx, c, clientName)
	if err != nil {
		return err
	}
	err = call(c, agent)
	if errors.Is(err, clientlib.ErrUnknownAgent) {
		if _, err = c.Register(ctx, agent, s.priority); err == nil {
			err = call(c, agent)
		}
	}
	return err
}

// keep records granted leases and has the renewer renew them every ttl/3.
func (s *mcpSession) keep(grants []grantJSON, ttl time.Duration) []mcpLease {
	now := time.Now()
	out := make([]mcpLease, len(grants))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = make(map[string]*heldLease)
	}
	for i, g := range grants {
		l := &heldLease{mcpLease: leaseOf(g), ttl: ttl, renewAt: now.Add(ttl / 3)}
		s.held[g.LeaseID] = l
		out[i] = l.mcpLease
	}
	if s.wake == nil {
		s.wake = make(chan struct{}, 1)
		s.stopped = make(chan struct{})
		go s.renew(s.c, s.wake, s.stopped)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return out
}

// renew heartbeats each held lease when its renewal is due, until the
// session closes. A lease klockd no longer has (expired while klockd was
// unreachable, or revoked) moves to the lost list.
func (s *mcpSession) renew(c *clientlib.Client, wake <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	for {
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			return
		}
		now := time.Now()
		next := now.Add(time.Hour)
		var due []heldLease
		for _, l := range s.held {
			if !l.renewAt.After(now) {
				due = append(due, *l)
			} else if l.renewAt.Before(next) {
				next = l.renewAt
			}
		}
		s.mu.Unlock()
		for _, l := range due {
			s.renewOne(c, l)
		}
		if len(due) > 0 {
			continue
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// renewOne heartbeats one lease and records the outcome.
func (s *mcpSession) renewOne(c *clientlib.Client, l heldLease) {
	ctx, cancel := context.WithTimeout(context.Background(), min(l.ttl/3, mcpCallTimeout))
	defer cancel()
	exp, err := c.Heartbeat(ctx, l.LeaseID, 0)
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.held[l.LeaseID]
	if !ok {
		return // released meanwhile
	}
	switch {
	case err == nil:
		cur.ExpiresAt = exp.Format(time.RFC3339Nano)
		cur.renewAt = time.Now().Add(cur.ttl / 3)
	case errors.Is(err, clientlib.ErrNotFound), time.Now().After(expiresAt(cur.mcpLease)):
		delete(s.held, l.LeaseID)
		s.lost = append(s.lost, cur.mcpLease)
	default: // klockd unreachable or busy: try again soon, until it expires
		cur.renewAt = time.Now().Add(min(cur.ttl/10, time.Second))
	}
}

// expiresAt parses a lease's expiry back.
func expiresAt(l mcpLease) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, l.ExpiresAt)
	return t
}

// forget drops released leases from the renewal table.
func (s *mcpSession) forget(ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.held, id)
	}
}

// heldLeases returns the leases the session holds, by resource then fence,
// and those it lost.
func (s *mcpSession) heldLeases() (held, lost []mcpLease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.held {
		held = append(held, l.mcpLease)
	}
	sortLeases(held)
	return held, append([]mcpLease(nil), s.lost...)
}

// close ends the klock session, which releases every lease it holds, and
// unregisters an agent the session made up. It is called once, when the MCP
// server stops.
func (s *mcpSession) close() {
	s.mu.Lock()
	s.closing = true
	c, agent, fresh, wake, stopped := s.c, s.agent, s.fresh, s.wake, s.stopped
	s.mu.Unlock()
	if wake != nil {
		select {
		case wake <- struct{}{}:
		default:
		}
		<-stopped
	}
	if c == nil {
		return
	}
	defer c.Close()
	if agent == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.EndSession(ctx, agent, s.session); err != nil && !errors.Is(err, clientlib.ErrUnknownAgent) {
		fmt.Fprintf(s.a.stderr, "klockctl mcp: ending session %s of %s: %s; its leases expire at their ttl\n",
			s.session, agent, oneLine(errText(err)))
	}
	if fresh {
		unregisterAgent(ctx, c, agent)
	}
}

// keyOf resolves a tool's path argument to a resource: TYPE:path as given,
// anything else a file resolved against the server's working directory.
func (s *mcpSession) keyOf(arg string) (resource, error) {
	return parseResource(arg, s.cwd)
}

// mcpIntents resolves paths into intents with predicate.
func (s *mcpSession) mcpIntents(paths []string, predicate string) ([]clientlib.Intent, error) {
	rs, err := parseResources(paths, s.cwd)
	if err != nil {
		return nil, fmt.Errorf("paths: %s", strings.TrimPrefix(err.Error(), "klock: "))
	}
	if len(rs) > protocol.MaxIntents {
		return nil, fmt.Errorf("paths: at most %d at once, got %d", protocol.MaxIntents, len(rs))
	}
	out := make([]clientlib.Intent, len(rs))
	for i, r := range rs {
		out[i] = clientlib.Intent{ResourceType: r.Type, ResourcePath: r.Path, Predicate: predicate, ClientPath: r.ClientPath}
	}
	return out, nil
}
