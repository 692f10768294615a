package tests

import (
	"fmt"
	"os"
	"testing"

	"github.com/klockd/klock/tests/harness"
)

// leaseInfoShape is one entry of list_leases.
var leaseInfoShape = cfShape{"lease_id": cfStr, "agent_id": cfStr, "session_id": cfStr, "resource": cfStr,
	"predicate": cfStr, "acquired_at": cfUint, "expires_at": cfUint, "fence": cfUint, "owner_uid": cfUint, "owner_pid": cfUint}

// agentInfoShape is one entry of list_agents.
var agentInfoShape = cfShape{"agent_id": cfStr, "priority": cfUint, "registered_at": cfUint, "leases": cfUint, "waiting": cfUint}

// listLeases calls list_leases and checks the shapes; it returns the
// entries and truncated.
func (c *confConn) listLeases(args map[string]any) ([]map[string]any, bool) {
	c.t.Helper()
	r := c.ok("list_leases", args)
	shape := cfShape{"leases": cfArr, "truncated": cfBool}
	if r["truncated"] == true {
		shape["next"] = cfStr // a cut list says where the rest starts
	}
	cfCheckShape(c.t, "list_leases", r, shape)
	var out []map[string]any
	for i, l := range r["leases"].([]any) {
		m, ok := l.(map[string]any)
		if !ok {
			c.t.Fatalf("list_leases entry %d = %v (%T)", i, l, l)
		}
		cfCheckShape(c.t, "list_leases entry", m, leaseInfoShape)
		out = append(out, m)
	}
	return out, r["truncated"].(bool)
}

// TestConformanceEndSessionCounts covers end_session, active_lease_count
// and evict_expired.
func TestConformanceEndSessionCounts(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	count := func() int64 {
		r := c.ok("active_lease_count", nil)
		cfCheckShape(t, "active_lease_count", r, cfShape{"count": cfUint})
		return cfNum(t, r, "count")
	}
	if n := count(); n != 0 {
		t.Errorf("count on a fresh daemon = %d", n)
	}
	c.grant(cfAcq("a", "s1", "/1", "MUTATES", 60000))
	c.grant(cfAcq("a", "s1", "/2", "MUTATES", 60000))
	c.grant(cfAcq("a", "s2", "/3", "MUTATES", 60000))
	if n := count(); n != 3 {
		t.Errorf("count = %d; want 3", n)
	}
	r := c.ok("end_session", map[string]any{"agent_id": "a", "session_id": "s1"})
	cfCheckShape(t, "end_session", r, cfShape{"released": cfUint})
	if cfNum(t, r, "released") != 2 {
		t.Errorf("end_session = %v; want released 2", r)
	}
	if n := count(); n != 1 {
		t.Errorf("count after end_session = %d; want 1", n)
	}
	c.deny(cfAcq("a", "s1", "/4", "MUTATES", 1000), "SESSION_EXPIRED")
	if r := c.ok("end_session", map[string]any{"agent_id": "a", "session_id": "s1"}); cfNum(t, r, "released") != 0 {
		t.Errorf("second end_session = %v; want released 0", r)
	}
	c.fail("end_session", map[string]any{"agent_id": "never", "session_id": "s"}, "UNKNOWN_AGENT")

	// Expired leases are never counted, even before they are removed.
	e := c.grant(cfAcq("a", "s2", "/e", "MUTATES", 100))
	cfWaitPast(t, cfNum(t, e, "expires_at"))
	if n := count(); n != 1 {
		t.Errorf("count after expiry = %d; want 1", n)
	}
	r = c.ok("evict_expired", nil)
	cfCheckShape(t, "evict_expired", r, cfShape{"evicted": cfUint})
	if n := cfNum(t, r, "evicted"); n > 1 {
		t.Errorf("evict_expired = %d; want 0 or 1", n)
	}
	if r := c.ok("evict_expired", map[string]any{}); cfNum(t, r, "evicted") != 0 {
		t.Errorf("second evict_expired = %v; want 0", r)
	}
}

// TestConformanceListLeases covers list_leases: entry fields, sort order,
// filters, limit and truncated.
func TestConformanceListLeases(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	c.register("b", 2)
	c.grant(cfAcq("a", "s", "/src/z", "MUTATES", 60000))
	g1 := c.grant(cfAcq("b", "t", "/src/b", "CONSUMES", 60000))
	c.grant(cfAcq("a", "s", "/other", "MUTATES", 60000))
	g2 := c.grant(cfAcq("a", "s", "/src/b", "CONSUMES", 60000))
	c.grant(cfWith(cfAcq("a", "s", "name", "PROVIDES", 60000), "resource_type", "symbol"))

	all, trunc := c.listLeases(nil)
	if len(all) != 5 || trunc {
		t.Fatalf("list_leases = %d entries, truncated %v; want 5, false", len(all), trunc)
	}
	for i := 1; i < len(all); i++ {
		p, q := all[i-1], all[i]
		pr, qr := p["resource"].(string), q["resource"].(string)
		if pr > qr || pr == qr && cfNum(t, p, "fence") > cfNum(t, q, "fence") {
			t.Errorf("list_leases entries %d, %d = %s#%v, %s#%v; want sorted by resource then fence", i-1, i, pr, p["fence"], qr, q["fence"])
		}
	}
	// The two leases on FILE:/src/b come in fence order with every field.
	var onB []map[string]any
	for _, l := range all {
		if l["resource"] == "FILE:/src/b" {
			onB = append(onB, l)
		}
	}
	if len(onB) != 2 || onB[0]["lease_id"] != g1["lease_id"] || onB[1]["lease_id"] != g2["lease_id"] {
		t.Errorf("FILE:/src/b entries %v; want %v then %v", onB, g1["lease_id"], g2["lease_id"])
	} else {
		for _, k := range []string{"agent_id", "session_id", "resource", "predicate", "acquired_at", "expires_at", "fence"} {
			if fmt.Sprint(onB[0][k]) != fmt.Sprint(g1[k]) {
				t.Errorf("list entry %s = %v; grant said %v", k, onB[0][k], g1[k])
			}
		}
		if cfNum(t, onB[0], "owner_uid") != int64(os.Getuid()) || cfNum(t, onB[0], "owner_pid") != int64(os.Getpid()) {
			t.Errorf("owner_uid/pid = %v/%v; want %d/%d", onB[0]["owner_uid"], onB[0]["owner_pid"], os.Getuid(), os.Getpid())
		}
	}

	if ls, _ := c.listLeases(map[string]any{"resource_prefix": "FILE:/src/"}); len(ls) != 3 {
		t.Errorf("resource_prefix FILE:/src/ gave %d entries; want 3", len(ls))
	}
	if ls, _ := c.listLeases(map[string]any{"agent_id": "b"}); len(ls) != 1 || ls[0]["agent_id"] != "b" {
		t.Errorf("agent_id b gave %v", ls)
	}
	if ls, _ := c.listLeases(map[string]any{"agent_id": "a", "resource_prefix": "FILE:"}); len(ls) != 3 {
		t.Errorf("agent_id a + FILE: gave %d entries; want 3", len(ls))
	}
	ls, trunc := c.listLeases(map[string]any{"limit": 2})
	if len(ls) != 2 || !trunc || ls[0]["lease_id"] != all[0]["lease_id"] || ls[1]["lease_id"] != all[1]["lease_id"] {
		t.Errorf("limit 2 = %d entries truncated %v; want the first 2 and truncated", len(ls), trunc)
	}
	if ls, trunc := c.listLeases(map[string]any{"limit": 5}); len(ls) != 5 || trunc {
		t.Errorf("limit 5 = %d entries truncated %v; want 5, false", len(ls), trunc)
	}
	if ls, trunc := c.listLeases(map[string]any{"limit": 10000}); len(ls) != 5 || trunc {
		t.Errorf("limit 10000 = %d entries truncated %v", len(ls), trunc)
	}
	c.fail("list_leases", map[string]any{"limit": 10001}, "INVALID_ARGUMENT")
	c.fail("list_leases", map[string]any{"limit": -1}, "INVALID_ARGUMENT")

	// limit absent or 0 means 1000.
	for i := 0; i < 16; i++ {
		c.ok("acquire_many", map[string]any{"agent_id": "b", "session_id": "bulk", "ttl": 60000,
			"intents": intents(fmt.Sprintf("/bulk/%02d/", i), "MUTATES", 64)})
	}
	for _, a := range []map[string]any{nil, {"limit": 0}} {
		if ls, trunc := c.listLeases(a); len(ls) != 1000 || !trunc {
			t.Errorf("list_leases %v over 1029 leases = %d entries truncated %v; want 1000, true", a, len(ls), trunc)
		}
	}
	if ls, trunc := c.listLeases(map[string]any{"limit": 2000}); len(ls) != 1029 || trunc {
		t.Errorf("limit 2000 = %d entries truncated %v; want 1029, false", len(ls), trunc)
	}
}

// TestConformanceListAgents covers list_agents.
func TestConformanceListAgents(t *testing.T) {
	d, c := confStart(t)
	c.register("z", 30)
	c.register("y", 10)
	c.register("x", 20)
	c.grant(cfAcq("z", "s", "/1", "MUTATES", 60000))
	c.grant(cfAcq("z", "s", "/2", "MUTATES", 60000))
	w := confDial(t, d)
	w.send("acquire", cfWith(cfAcq("y", "s", "/1", "MUTATES", 60000), "wait_timeout", 30000))
	waitFor(t, "y queued", func() bool { return cfNum(t, c.ok("stats", nil), "waiters") == 1 })

	list := func(a map[string]any) ([]map[string]any, bool) {
		r := c.ok("list_agents", a)
		shape := cfShape{"agents": cfArr, "truncated": cfBool}
		if r["truncated"] == true {
			shape["next"] = cfStr
		}
		cfCheckShape(t, "list_agents", r, shape)
		var out []map[string]any
		for _, x := range r["agents"].([]any) {
			m := x.(map[string]any)
			cfCheckShape(t, "list_agents entry", m, agentInfoShape)
			out = append(out, m)
		}
		return out, r["truncated"].(bool)
	}
	as, trunc := list(nil)
	var got []string
	for _, a := range as {
		got = append(got, fmt.Sprintf("%s:%d:%d:%d", a["agent_id"], cfNum(t, a, "priority"), cfNum(t, a, "leases"), cfNum(t, a, "waiting")))
	}
	if want := "[y:10:0:1 x:20:0:0 z:30:2:0]"; fmt.Sprint(got) != want || trunc {
		t.Errorf("list_agents = %v truncated %v; want %s (agent:priority:leases:waiting), false", got, trunc, want)
	}
	if as, trunc := list(map[string]any{"limit": 1}); len(as) != 1 || !trunc || as[0]["agent_id"] != "y" {
		t.Errorf("list_agents limit 1 = %v truncated %v", as, trunc)
	}
	c.fail("list_agents", map[string]any{"limit": 10001}, "INVALID_ARGUMENT")
	c.fail("list_agents", map[string]any{"limit": -1}, "INVALID_ARGUMENT")
}

// TestConformanceAdmin covers revoke, freeze and thaw (the tests run as
// root, so admin ops are allowed).
func TestConformanceAdmin(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	c.register("b", 2)
	g := c.grant(cfAcq("a", "s", "/r", "MUTATES", 60000))
	r := c.ok("revoke", map[string]any{"lease_id": g["lease_id"]})
	cfCheckShape(t, "revoke", r, cfShape{"revoked": cfBool})
	if r["revoked"] != true {
		t.Errorf("revoke = %v; want true", r)
	}
	if r := c.ok("revoke", map[string]any{"lease_id": g["lease_id"]}); r["revoked"] != false {
		t.Errorf("second revoke = %v; want false", r)
	}
	c.fail("heartbeat", map[string]any{"lease_id": g["lease_id"]}, "NOT_FOUND")
	c.grant(cfAcq("b", "s", "/r", "MUTATES", 60000))

	h := c.grant(cfAcq("a", "s", "/x/y", "MUTATES", 60000))
	fz := map[string]any{"resource_type": "file", "resource_path": "/x/./y"}
	r = c.ok("freeze", fz)
	cfCheckShape(t, "freeze", r, cfShape{"frozen": cfBool})
	if r["frozen"] != true {
		t.Errorf("freeze = %v; want frozen true", r)
	}
	if r := c.ok("freeze", fz); r["frozen"] != true {
		t.Errorf("second freeze = %v; want frozen true", r)
	}
	c.deny(cfAcq("b", "s", "/x/y", "CONSUMES", 1000), "RESOURCE_LOCKED")
	c.deny(cfAcq("a", "s", "/x/y", "MUTATES", 1000), "RESOURCE_LOCKED")
	c.ok("heartbeat", map[string]any{"lease_id": h["lease_id"]}) // held leases keep running
	r = c.ok("thaw", map[string]any{"resource_type": "FILE", "resource_path": "/x/y"})
	cfCheckShape(t, "thaw", r, cfShape{"frozen": cfBool})
	if r["frozen"] != false {
		t.Errorf("thaw = %v; want frozen false", r)
	}
	if r := c.ok("thaw", fz); r["frozen"] != false {
		t.Errorf("second thaw = %v; want frozen false", r)
	}
	c.grant(cfAcq("a", "s", "/x/y", "MUTATES", 1000))
}

// TestConformanceStats checks the stats keys and counters.
func TestConformanceStats(t *testing.T) {
	d, c := confStart(t)
	shape := cfShape{"uptime_ms": cfUint, "connections": cfUint, "agents": cfUint,
		"leases": cfUint, "waiters": cfUint, "ops": cfUint, "grants": cfUint, "waits": cfUint,
		"dies": cfUint, "expirations": cfUint, "fence": cfUint,
		"degraded": cfBool, "degraded_since": cfUint, "degraded_reason": cfStr,
		"bound_processes": cfUint, "pidfds": cfUint, "exit_releases": cfUint, "goroutines": cfUint}
	if harness.ClusterMode() {
		shape["cluster"] = cfMap // protocol/README.md "stats"
	}
	stats := func() map[string]any {
		r := c.ok("stats", nil)
		cfCheckShape(t, "stats", r, shape)
		return r
	}
	s0 := stats()
	for i := 0; i < 3; i++ {
		c.ok("hello", nil)
	}
	s1 := stats()
	if n := cfNum(t, s1, "ops") - cfNum(t, s0, "ops"); n != 4 {
		t.Errorf("ops grew by %d over 3 hellos and a stats; want 4", n)
	}
	if cfNum(t, s1, "uptime_ms") < cfNum(t, s0, "uptime_ms") {
		t.Errorf("uptime_ms went back")
	}
	conns := func(n int64) func() bool {
		return func() bool { return cfNum(t, stats(), "connections") == n }
	}
	waitFor(t, "connections to be 1 (this one)", conns(1))
	c2 := confDial(t, d)
	c2.ok("hello", nil)
	waitFor(t, "connections to be 2", conns(2))
	c2.c.Close()
	waitFor(t, "connections to be 1 again", conns(1))

	c.register("old", 1)
	c.register("young", 2)
	g := c.grant(cfAcq("young", "s", "/a", "MUTATES", 60000))
	c.deny(cfAcq("old", "s", "/a", "MUTATES", 1000), "WAIT")
	c.deny(cfAcq("old", "s", "/a", "MUTATES", 1000), "WAIT")
	c.grant(cfAcq("old", "s", "/b", "MUTATES", 60000))
	c.deny(cfAcq("young", "s", "/b", "MUTATES", 1000), "DIE")
	e := c.grant(cfAcq("old", "s", "/c", "MUTATES", 50))
	s2 := stats()
	want := map[string]int64{"agents": 2, "leases": 3, "waiters": 0, "grants": 3, "waits": 2, "dies": 1, "fence": cfNum(t, e, "fence")}
	for k, v := range want {
		if got := cfNum(t, s2, k); got != v {
			t.Errorf("stats %s = %d; want %d", k, got, v)
		}
	}
	if cfNum(t, e, "fence") <= cfNum(t, g, "fence") {
		t.Errorf("fences %v then %v", g["fence"], e["fence"])
	}
	waitFor(t, "the expiry to be counted", func() bool {
		s := stats()
		return cfNum(t, s, "expirations") == 1 && cfNum(t, s, "leases") == 2
	})
}

// TestConformanceResourceExhausted checks RESOURCE_EXHAUSTED at the lease
// limit.
func TestConformanceResourceExhausted(t *testing.T) {
	_, c := confStart(t, "--max-leases", "2")
	c.register("a", 1)
	c.grant(cfAcq("a", "s", "/1", "MUTATES", 60000))
	c.grant(cfAcq("a", "s", "/2", "MUTATES", 60000))
	c.fail("acquire", cfAcq("a", "s", "/3", "MUTATES", 60000), "RESOURCE_EXHAUSTED")
}
