package engine

import (
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// TestLeaseKeepsNoRequestBytes checks that what the engine keeps of a
// lease or a parked request uses strings of its own, not the caller's: the
// daemon's request strings share the bytes of their whole frame, so a
// lease holding one keeps the frame alive (tens of bytes a lease for an
// acquire_many of 64, the whole frame for a single acquire).
func TestLeaseKeepsNoRequestBytes(t *testing.T) {
	e := New(Config{})
	frame := strings.Repeat("x", 4096) + "agent-1session-1/src/a.go/wt/src/a.go" // one allocation, as a decoded frame
	agent, session, path, clientPath := frame[4096:4103], frame[4103:4112], frame[4112:4121], frame[4121:]
	inFrame := func(s string) bool {
		p, lo := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.StringData(frame)))
		return p >= lo && p < lo+uintptr(len(frame))
	}
	_, err := e.Register(t0, alice, agent, 1, true)
	require.NoError(t, err)
	req := req1(agent, session, "FILE", path, "MUTATES", 60_000)
	req.Intents[0].ClientPath = clientPath
	r, err := e.Acquire(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r.Granted)
	x := e.lookup(r.Leases[0].ID)
	require.NotNil(t, x)
	require.Equal(t, r.Leases[0], e.public(x))
	for name, s := range map[string]string{"agent": x.agentID(), "session": x.sessionID(), "resource": x.resource(), "client path": e.clientPath(x), "agent's id": x.agent().id, "session list": x.sess().name} {
		require.False(t, inFrame(s), "the lease's %s %q points into the request's bytes", name, s)
	}

	// An older agent's request waits for the lease (Wait-Die).
	older := "agent-0"
	_, err = e.Register(t0, alice, older, 0, true)
	require.NoError(t, err)
	req = req1(older, session, "FILE", path, "MUTATES", 60_000)
	req.Intents[0].ClientPath = clientPath
	req.WaitTimeout = 60_000
	req.Idem = frame[4103:4110]
	r, err = e.Acquire(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r.Queued)
	for _, w := range e.waiters {
		require.False(t, inFrame(w.session), "the waiter's session points into the request's bytes")
		require.False(t, inFrame(w.idem), "the waiter's idem points into the request's bytes")
		require.False(t, inFrame(w.targets[0].clientPath), "the waiter's client path points into the request's bytes")
	}
}
