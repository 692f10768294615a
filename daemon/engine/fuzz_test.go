package engine

import (
	"testing"

	"github.com/klockd/klock/protocol"
)

// FuzzAcquire feeds arbitrary arguments to the engine's entry points: they
// must never panic, and every refusal is a typed *Error with a code.
func FuzzAcquire(f *testing.F) {
	f.Add("a", "s", "FILE", "/src/../x", "mutates", int64(1000), int64(0), "k", "FILE:/")
	f.Add("", "\x00", "file", "", "", int64(-1), int64(-1), "", "")
	f.Add("a", "s", "SYMBOL", "\xff\xfe", "DEPENDS_ON", int64(1<<62), int64(5), "0123456789012345678901234567890123456789012345678901234567890123456789", "\u0085")
	f.Fuzz(func(t *testing.T, agent, session, typ, path, pred string, ttl, wait int64, idem, prefix string) {
		e := New(Config{MaxLeases: 10, MaxWaiters: 10, Journal: true})
		if _, err := e.Register(t0, alice, "a", 1, true); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Register(t0, alice, "b", 2, true); err != nil {
			t.Fatal(err)
		}
		check := func(err error) {
			if err == nil {
				return
			}
			ee, ok := err.(*Error)
			if !ok || ee.Code == "" || ee.Code == protocol.CodeInternal || len(ee.Message) < 7 || ee.Message[:7] != "klock: " {
				t.Fatalf("bad error %T %v", err, err)
			}
		}
		mustGrant(t, e, t0, "b", "s", "/x", "MUTATES")
		req := AcquireRequest{AgentID: agent, SessionID: session, TTL: ttl, WaitTimeout: wait, Idem: idem,
			Intents: []Intent{{typ, path, pred}}}
		r, err := e.Acquire(t0, alice, req)
		check(err)
		if err == nil && r.Granted {
			_, err = e.Heartbeat(t0, alice, r.Leases[0].ID, ttl)
			check(err)
		}
		req.Intents = append(req.Intents, Intent{typ, "/x", pred})
		_, err = e.AcquireMany(t0, alice, req)
		check(err)
		_, err = e.Register(t0, alice, agent, ttl, ttl >= 0)
		check(err)
		_, _, err = e.EndSession(t0, alice, agent, session)
		check(err)
		_, _, err = e.Release(t0, alice, path)
		check(err)
		_, _, err = e.Freeze(t0, root, typ, path)
		check(err)
		_, err = e.Thaw(t0, root, typ, path)
		check(err)
		_, _, err = e.ListLeases(t0, LeaseFilter{AgentID: agent, ResourcePrefix: prefix, Limit: int(wait)})
		check(err)
		_, _, err = e.ListAgents(t0, int(wait))
		check(err)
		e.Expire(t0 + ttl)
		replayEqual(t, e, e.Records())
	})
}
