package engine

import (
	"testing"

	"github.com/klockd/klock/protocol"
)

// FuzzAcquire feeds arbitrary arguments to the engine's entry points: they
// must never panic, and every refusal is a typed *Error with a code. The
// path is also taken as a subtree (with '/' added) and next to leases above
// and below it, and every decision on it must agree with the brute-force
// reference of subtree_property_test.go.
func FuzzAcquire(f *testing.F) {
	f.Add("a", "s", "FILE", "/src/../x", "mutates", int64(1000), int64(0), "k", "FILE:/")
	f.Add("a", "s", "FILE", "/src//./x/../", "MUTATES", int64(1000), int64(5), "", "FILE:/src/")
	f.Add("b", "s2", "FILE", "/x/", "CONSUMES", int64(10), int64(0), "", "")
	f.Add("a", "s", "FILE", "//x//y/./z/..//", "PROVIDES", int64(1000), int64(0), "", "")
	f.Add("a", "s", "FILE", "/..", "DELETES", int64(1000), int64(0), "", "")
	f.Add("a", "s", "file", "x/../y/", "MUTATES", int64(1000), int64(0), "", "") // relative: refused
	f.Add("a", "s", "SYMBOL", "a//b/./../", "RENAMES", int64(1000), int64(0), "", "SYMBOL:a/")
	f.Add("a", "s", "CONFIG_KEY", "/", "MUTATES", int64(1000), int64(0), "", "")
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
			Intents: []Intent{{ResourceType: typ, ResourcePath: path, Predicate: pred}}}
		r, err := e.Acquire(t0, alice, req)
		check(err)
		if err == nil && r.Granted {
			_, err = e.Heartbeat(t0, alice, r.Leases[0].ID, ttl)
			check(err)
		}
		req.Intents = append(req.Intents, Intent{ResourceType: typ, ResourcePath: "/x", Predicate: pred})
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
		// Subtrees: leases of b above and below the path, then the path
		// and the path as a subtree, decided against the reference.
		for _, p := range []string{path + "/", path + "/below", path + "/deeper/", "/", "/x/"} {
			_, err = e.Acquire(t0, alice, AcquireRequest{AgentID: "b", SessionID: "s", TTL: 500, Intents: []Intent{{ResourceType: typ, ResourcePath: p, Predicate: "CONSUMES"}}})
			check(err)
		}
		for _, p := range []string{path, path + "/", path + "//./"} {
			key, err := ResourceKey(typ, p)
			if err != nil {
				check(err)
				continue
			}
			q, err := ParsePredicate(pred)
			if err != nil {
				q = Mutates
			}
			ts := []target{{key: key, pred: q, res: e.resources.get(key)}}
			a := e.agents["a"]
			v := e.decide(t0, a, "s", a.priority, ts, nil)
			ref := refDecide(e, t0, a, "s", a.priority, ts, nil)
			if by := v.by; v.reason != ref.reason || (by == nil) != (ref.heldBy == "") || by != nil && by.id != ref.heldBy || v.maxExpiry != ref.maxExp {
				t.Fatalf("decide %s %s = %s %v %d; reference %+v", q, key, v.reason, by, v.maxExpiry, ref)
			}
		}
		checkIndex(t, e)
		e.Expire(t0 + ttl)
		checkIndex(t, e)
		replayEqual(t, e, e.Records())
	})
}
