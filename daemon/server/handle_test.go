package server

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// handleConn returns a server with agent "a" registered and a connection
// to it whose requests are served by calling handle directly.
func handleConn(t *testing.T, log *slog.Logger) (*Server, *conn) {
	t.Helper()
	client, server := socketPair(t)
	t.Cleanup(func() { client.Close(); server.Close() })
	s := New(Config{Engine: engine.New(engine.Config{}), Logger: log})
	c := newConn(s, server, Peer{})
	ra := &protocol.Args{AgentID: "a"}
	ra.Set(protocol.ArgAgentID)
	reg, _ := protocol.AppendRequest(nil, 1, protocol.OpRegisterAgent, ra)
	s.handle(c, reg[protocol.HeaderSize:])
	return s, c
}

// TestAcquireAllocs: serving a granted acquire allocates the copy of its
// request's strings and what the engine keeps of the lease (the lease and
// its id), nothing more: the change, its engine request and the grant
// answered reuse the connection's (newChange, acquireRoom).
func TestAcquireAllocs(t *testing.T) {
	s, c := handleConn(t, slog.New(slog.NewTextHandler(io.Discard, nil)))
	acq, _ := protocol.AppendRequest(nil, 2, protocol.OpAcquire, acquireArgs("a", "/r", 30000, 0))
	acq = acq[protocol.HeaderSize:]
	c.out, c.marks = make([]byte, 0, 4096), make([]answerMark, 0, 4)
	allocs := testing.AllocsPerRun(200, func() {
		c.out, c.marks = c.out[:0], c.marks[:0]
		s.handle(c, acq)
		g := &c.room.grant
		if !g.Success {
			t.Fatalf("acquire not granted: %q", c.out)
		}
		s.mu.Lock()
		ok, _, err := s.eng.Release(s.nowMS(), c.caller, g.LeaseID)
		s.mu.Unlock()
		if !ok || err != nil {
			t.Fatalf("release = %v, %v", ok, err)
		}
	})
	if allocs > 3 {
		t.Errorf("an acquire and its release allocated %.1f times; want at most 3", allocs)
	}
}

// TestRequestLog: every request is logged at debug level, and none at
// info.
func TestRequestLog(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		var logs bytes.Buffer
		_, _ = handleConn(t, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: level})))
		if got, want := strings.Contains(logs.String(), "msg=request"), level == slog.LevelDebug; got != want {
			t.Errorf("at level %v, a request logged: %v; want %v\n%s", level, got, want, &logs)
		}
	}
}
