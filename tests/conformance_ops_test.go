package tests

import (
	"fmt"
	"strings"
	"testing"
)

// registerShape is register_agent's result.
var registerShape = cfShape{"agent_id": cfStr, "priority": cfUint, "registered_at": cfUint}

// TestConformanceRegister covers register_agent: explicit and assigned
// priorities, re-registration, and PRIORITY_CONFLICT while holding or
// waiting.
func TestConformanceRegister(t *testing.T) {
	d, c := confStart(t)
	before := cfNow()
	r := c.register("a", 100)
	cfCheckShape(t, "register", r, registerShape)
	if r["agent_id"] != "a" || cfNum(t, r, "priority") != 100 {
		t.Errorf("register a 100 = %v", r)
	}
	if at := cfNum(t, r, "registered_at"); at < before || at > cfNow() {
		t.Errorf("registered_at %d not in [%d, now]", at, before)
	}

	// Without priority: the registration time in ms, strictly increasing.
	before = cfNow()
	var prev int64 = -1
	for i := 0; i < 20; i++ {
		r := c.register(fmt.Sprintf("auto%d", i), -1)
		cfCheckShape(t, "register without priority", r, registerShape)
		p := cfNum(t, r, "priority")
		if i == 0 && (p < before || p > cfNow()+1000) {
			t.Errorf("assigned priority %d is not the registration time (now %d)", p, before)
		}
		if p <= prev {
			t.Errorf("assigned priority %d after %d; want strictly increasing", p, prev)
		}
		prev = p
	}

	// Re-registering with the same priority or none is a no-op.
	first := c.register("auto0", -1)
	again := c.register("auto0", -1)
	if fmt.Sprint(first) != fmt.Sprint(again) {
		t.Errorf("re-register without priority = %v; want %v", again, first)
	}
	if r := c.register("a", 100); cfNum(t, r, "priority") != 100 {
		t.Errorf("re-register same priority = %v", r)
	}
	// A different priority while idle is applied.
	if r := c.register("a", 50); cfNum(t, r, "priority") != 50 {
		t.Errorf("re-register idle a with 50 = %v; want priority 50", r)
	}
	// Priority 0 is a valid uint.
	if r := c.register("zero", 0); cfNum(t, r, "priority") != 0 {
		t.Errorf("register priority 0 = %v", r)
	}

	// While holding: a different priority is refused; the same is a no-op.
	c.grant(cfAcq("a", "s", "/r", "MUTATES", 60000))
	c.fail("register_agent", map[string]any{"agent_id": "a", "priority": 60}, "PRIORITY_CONFLICT")
	if r := c.register("a", 50); cfNum(t, r, "priority") != 50 {
		t.Errorf("re-register holding a with its own priority = %v", r)
	}
	if r := c.register("a", -1); cfNum(t, r, "priority") != 50 {
		t.Errorf("re-register holding a without priority = %v", r)
	}

	// While waiting (a parked acquire): refused too.
	c.register("old", 10)
	w := confDial(t, d)
	w.send("acquire", cfWith(cfAcq("old", "s", "/r", "MUTATES", 60000), "wait_timeout", 30000))
	waitFor(t, "old to be queued", func() bool {
		return cfNum(t, c.ok("stats", nil), "waiters") == 1
	})
	c.fail("register_agent", map[string]any{"agent_id": "old", "priority": 11}, "PRIORITY_CONFLICT")
	c.fail("unregister_agent", map[string]any{"agent_id": "old"}, "PRIORITY_CONFLICT")
}

// TestConformanceUnregister covers unregister_agent.
func TestConformanceUnregister(t *testing.T) {
	_, c := confStart(t)
	r := c.ok("unregister_agent", map[string]any{"agent_id": "never"})
	cfCheckShape(t, "unregister", r, cfShape{"unregistered": cfBool})
	if r["unregistered"] != false {
		t.Errorf("unregister of an unknown agent = %v; want false", r)
	}
	c.register("a", 1)
	g := c.grant(cfAcq("a", "s", "/x", "MUTATES", 60000))
	c.fail("unregister_agent", map[string]any{"agent_id": "a"}, "PRIORITY_CONFLICT")
	c.ok("release", map[string]any{"lease_id": g["lease_id"]})
	if r := c.ok("unregister_agent", map[string]any{"agent_id": "a"}); r["unregistered"] != true {
		t.Errorf("unregister = %v; want true", r)
	}
	if r := c.ok("unregister_agent", map[string]any{"agent_id": "a"}); r["unregistered"] != false {
		t.Errorf("second unregister = %v; want false", r)
	}
	c.fail("acquire", cfAcq("a", "s", "/x", "MUTATES", 1000), "UNKNOWN_AGENT")
}

// TestConformanceAcquireGrant checks a grant's fields, fences, re-entrancy
// and the case-insensitive vocabulary.
func TestConformanceAcquireGrant(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	before := cfNow()
	g := c.grant(cfAcq("a", "s1", "/src/auth.ts", "MUTATES", 60000))
	after := cfNow()
	want := map[string]any{"agent_id": "a", "session_id": "s1", "resource": "FILE:/src/auth.ts", "predicate": "MUTATES"}
	for k, v := range want {
		if g[k] != v {
			t.Errorf("grant %s = %v; want %v", k, g[k], v)
		}
	}
	at, exp := cfNum(t, g, "acquired_at"), cfNum(t, g, "expires_at")
	if at < before || at > after || exp != at+60000 {
		t.Errorf("acquired_at %d expires_at %d; want acquired_at in [%d, %d] and expires_at = acquired_at + ttl", at, exp, before, after)
	}
	fence := cfNum(t, g, "fence")
	if fence < 1 {
		t.Errorf("first fence %d; want >= 1", fence)
	}

	// Re-entrant: same agent and session, conflicting predicate.
	g2 := c.grant(cfAcq("a", "s1", "/src/auth.ts", "MUTATES", 60000))
	if f := cfNum(t, g2, "fence"); f <= fence {
		t.Errorf("re-entrant fence %d; want > %d", f, fence)
	}
	fence = cfNum(t, g2, "fence")

	// Case-insensitive input, upper-case output; FILE paths are cleaned,
	// other types taken as given. Every type and predicate is accepted.
	types := []string{"file", "Symbol", "api_endpoint", "DATABASE_table", "config_KEY"}
	preds := []string{"provides", "Consumes", "mutates", "DELETES", "depends_on", "Renames"}
	for i, typ := range types {
		for j, pred := range preds {
			path := fmt.Sprintf("/v%d/./w%d/../x", i, j)
			a := cfWith(cfAcq("a", "s1", path, pred, 60000), "resource_type", typ)
			g := c.grant(a)
			wantRes := strings.ToUpper(typ) + ":" + path
			if strings.EqualFold(typ, "file") {
				wantRes = fmt.Sprintf("FILE:/v%d/x", i)
			}
			if g["resource"] != wantRes || g["predicate"] != strings.ToUpper(pred) {
				t.Errorf("acquire %s %q %s = resource %v predicate %v; want %s %s", typ, path, pred, g["resource"], g["predicate"], wantRes, strings.ToUpper(pred))
			}
			if f := cfNum(t, g, "fence"); f <= fence {
				t.Errorf("fence %d after %d; want increasing", f, fence)
			} else {
				fence = f
			}
		}
	}
	// The cleaned path is the same resource: it conflicts.
	c.register("b", 2)
	d := c.deny(cfAcq("b", "s", "/src/./x/../auth.ts", "MUTATES", 1000), "DIE")
	if d["held_by"] != "a" {
		t.Errorf("held_by %v; want a", d["held_by"])
	}
}

// TestConformanceAcquireDenials checks DIE, WAIT, CONFLICT,
// RESOURCE_LOCKED and SESSION_EXPIRED with their fields and wait_time.
func TestConformanceAcquireDenials(t *testing.T) {
	dm, c := confStart(t)
	c.register("mid", 100)
	c.register("same", 100)
	c.register("young", 200)
	c.register("old", 50)
	c.register("oldest", 10)
	c.grant(cfAcq("mid", "s", "/x", "MUTATES", 60000))

	d := c.deny(cfAcq("young", "s", "/x", "MUTATES", 1000), "DIE")
	if d["held_by"] != "mid" || cfNum(t, d, "wait_time") != 1000 {
		t.Errorf("DIE = %v; want held_by mid, wait_time 1000 (min(1000, ~60000))", d)
	}
	if d := c.deny(cfAcq("same", "s", "/x", "MUTATES", 1000), "DIE"); d["held_by"] != "mid" {
		t.Errorf("equal priority = %v; want DIE held_by mid", d)
	}
	if d := c.deny(cfAcq("old", "s", "/x", "mutates", 1000), "WAIT"); d["held_by"] != "mid" {
		t.Errorf("WAIT = %v; want held_by mid", d)
	}
	// wait_timeout 0 answers at once.
	c.deny(cfWith(cfAcq("old", "s", "/x", "MUTATES", 1000), "wait_timeout", 0), "WAIT")
	if d := c.deny(cfAcq("mid", "other", "/x", "MUTATES", 1000), "CONFLICT"); d["held_by"] != "mid" {
		t.Errorf("CONFLICT = %v; want held_by mid", d)
	}

	// wait_time is min(1000, ms until the latest conflicting expiry), >= 1:
	// two shared holders expiring in 400 and 900 ms give about 900.
	c.grant(cfAcq("mid", "s", "/short", "CONSUMES", 400))
	g := c.grant(cfAcq("same", "s", "/short", "CONSUMES", 900))
	d = c.deny(cfAcq("young", "s", "/short", "MUTATES", 1000), "DIE")
	left := cfNum(t, g, "expires_at") - cfNow()
	if w := cfNum(t, d, "wait_time"); w > 900 || w < 1 || w < left-2 {
		t.Errorf("wait_time %d; want ms until the latest conflicting expiry (now %d left), in [1, 900]", w, left)
	}

	// An older queued request makes a junior DIE even when the holder is younger.
	q := confDial(t, dm)
	q.send("acquire", cfWith(cfAcq("oldest", "s", "/x", "MUTATES", 60000), "wait_timeout", 30000))
	waitFor(t, "oldest to be queued", func() bool { return cfNum(t, c.ok("stats", nil), "waiters") == 1 })
	if d := c.deny(cfAcq("old", "s", "/x", "MUTATES", 1000), "DIE"); d["held_by"] != "oldest" {
		t.Errorf("behind a queued senior = %v; want DIE held_by oldest", d)
	}

	// RESOURCE_LOCKED while frozen; SESSION_EXPIRED after end_session.
	c.ok("freeze", map[string]any{"resource_type": "FILE", "resource_path": "/frozen"})
	c.deny(cfAcq("young", "s", "/frozen", "CONSUMES", 1000), "RESOURCE_LOCKED")
	c.ok("end_session", map[string]any{"agent_id": "young", "session_id": "gone"})
	c.deny(cfAcq("young", "gone", "/free", "CONSUMES", 1000), "SESSION_EXPIRED")
}

// TestConformanceParkedAnswers checks the answers a parked acquire can get:
// a grant when the holder expires, WAIT on timeout, RESOURCE_LOCKED on
// freeze, SESSION_EXPIRED on end_session.
func TestConformanceParkedAnswers(t *testing.T) {
	d, c := confStart(t)
	c.register("old", 1)
	c.register("young", 2)
	park := func(path, session string, waitTimeout int64) *confConn {
		w := confDial(t, d)
		w.send("acquire", cfWith(cfAcq("old", session, path, "MUTATES", 60000), "wait_timeout", waitTimeout))
		return w
	}
	answer := func(w *confConn) map[string]any {
		t.Helper()
		return cfResult(t, "parked", w.recv())
	}

	g := c.grant(cfAcq("young", "s", "/exp", "MUTATES", 300))
	w := park("/exp", "s", 30000)
	r := cfCheckGrant(t, "parked until expiry", answer(w))
	if cfNow() < cfNum(t, g, "expires_at") {
		t.Errorf("granted before the holder expired")
	}
	if cfNum(t, r, "fence") <= cfNum(t, g, "fence") {
		t.Errorf("fence did not grow: %v then %v", g["fence"], r["fence"])
	}

	c.grant(cfAcq("young", "s", "/t", "MUTATES", 60000))
	start := cfNow()
	w = park("/t", "s", 200)
	cfCheckDenial(t, "parked until timeout", answer(w), "WAIT")
	if el := cfNow() - start; el < 200 {
		t.Errorf("WAIT after %d ms; want >= wait_timeout 200", el)
	}

	c.grant(cfAcq("young", "s", "/f", "MUTATES", 60000))
	w = park("/f", "s", 30000)
	waitFor(t, "queued", func() bool { return cfNum(t, c.ok("stats", nil), "waiters") == 1 })
	c.ok("freeze", map[string]any{"resource_type": "FILE", "resource_path": "/f"})
	cfCheckDenial(t, "parked then frozen", answer(w), "RESOURCE_LOCKED")

	c.grant(cfAcq("young", "s", "/e", "MUTATES", 60000))
	w = park("/e", "doomed", 30000)
	waitFor(t, "queued", func() bool { return cfNum(t, c.ok("stats", nil), "waiters") == 1 })
	c.ok("end_session", map[string]any{"agent_id": "old", "session_id": "doomed"})
	cfCheckDenial(t, "parked then session ended", answer(w), "SESSION_EXPIRED")

	// The verdict turns to DIE: when an older request queues on the same
	// resource, the parked junior is answered DIE (a junior never waits
	// behind a senior); the senior is granted when the holder leaves.
	c.register("oldest", 0)
	h := c.grant(cfAcq("young", "s", "/die", "MUTATES", 60000))
	w = park("/die", "s", 30000)
	waitFor(t, "queued", func() bool { return cfNum(t, c.ok("stats", nil), "waiters") == 1 })
	w2 := confDial(t, d)
	w2.send("acquire", cfWith(cfAcq("oldest", "s", "/die", "MUTATES", 60000), "wait_timeout", 30000))
	if r := cfCheckDenial(t, "parked junior", answer(w), "DIE"); r["held_by"] != "oldest" {
		t.Errorf("parked junior DIE held_by %v; want oldest", r["held_by"])
	}
	c.ok("release", map[string]any{"lease_id": h["lease_id"]})
	cfCheckGrant(t, "oldest after release", cfResult(t, "oldest", w2.recv()))

	// Revoke ends a lease as if it expired: the waiter is granted.
	h = c.grant(cfAcq("young", "s", "/rv", "MUTATES", 60000))
	w = park("/rv", "s", 30000)
	waitFor(t, "queued", func() bool { return cfNum(t, c.ok("stats", nil), "waiters") == 1 })
	c.ok("revoke", map[string]any{"lease_id": h["lease_id"]})
	cfCheckGrant(t, "parked then revoked", answer(w))
}

// TestConformanceIdem covers idempotency keys for acquire and acquire_many.
func TestConformanceIdem(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	base := cfWith(cfAcq("a", "s", "/i", "MUTATES", 60000), "idem", "k1")
	g := c.grant(base)
	again := c.grant(base)
	if again["lease_id"] != g["lease_id"] || cfNum(t, again, "fence") != cfNum(t, g, "fence") {
		t.Errorf("idem repeat = %v; want the same lease %v", again, g)
	}
	if n := cfNum(t, c.ok("active_lease_count", nil), "count"); n != 1 {
		t.Errorf("count after idem repeat = %d; want 1", n)
	}
	c.fail("acquire", cfWith(base, "resource_path", "/other"), "INVALID_ARGUMENT")
	c.fail("acquire", cfWith(base, "predicate", "CONSUMES"), "INVALID_ARGUMENT")
	c.ok("release", map[string]any{"lease_id": g["lease_id"]})
	if n := c.grant(base); n["lease_id"] == g["lease_id"] {
		t.Errorf("idem after release returned the released lease %v", n["lease_id"])
	}

	// The key is free again once the lease has expired.
	e := c.grant(cfWith(base, "idem", "ke", "ttl", 50))
	cfWaitPast(t, cfNum(t, e, "expires_at"))
	if n := c.grant(cfWith(base, "idem", "ke", "ttl", 50)); n["lease_id"] == e["lease_id"] {
		t.Errorf("idem after expiry returned the expired lease %v", n["lease_id"])
	}

	// 64 bytes is allowed, 65 is not.
	c.grant(cfWith(base, "idem", strings.Repeat("k", 64), "resource_path", "/i64"))
	c.fail("acquire", cfWith(base, "idem", strings.Repeat("k", 65), "resource_path", "/i65"), "INVALID_ARGUMENT")

	// acquire_many: the whole set again; shared key space with acquire.
	many := map[string]any{"agent_id": "a", "session_id": "s", "ttl": 60000, "idem": "k2",
		"intents": []any{
			map[string]any{"resource_type": "FILE", "resource_path": "/m1", "predicate": "MUTATES"},
			map[string]any{"resource_type": "FILE", "resource_path": "/m2", "predicate": "MUTATES"},
		}}
	first := c.ok("acquire_many", many)
	second := c.ok("acquire_many", many)
	if fmt.Sprint(leaseIDs(t, first)) != fmt.Sprint(leaseIDs(t, second)) {
		t.Errorf("acquire_many idem repeat = %v; want %v", leaseIDs(t, second), leaseIDs(t, first))
	}
	c.fail("acquire", cfWith(cfAcq("a", "s", "/m1", "MUTATES", 60000), "idem", "k2"), "INVALID_ARGUMENT")
	for _, id := range leaseIDs(t, first) {
		c.ok("release", map[string]any{"lease_id": id})
	}
	third := c.ok("acquire_many", many)
	if leaseIDs(t, third)[0] == leaseIDs(t, first)[0] {
		t.Errorf("acquire_many idem after release returned the old set")
	}
}

// leaseIDs returns the lease ids of an acquire_many grant.
func leaseIDs(t *testing.T, r map[string]any) []string {
	t.Helper()
	if r["success"] != true {
		t.Fatalf("acquire_many = %v; want a grant", r)
	}
	var ids []string
	for _, l := range r["leases"].([]any) {
		ids = append(ids, l.(map[string]any)["lease_id"].(string))
	}
	return ids
}

// intents returns n acquire_many intents on FILE:prefix<i> with pred.
func intents(prefix, pred string, n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = map[string]any{"resource_type": "FILE", "resource_path": fmt.Sprintf("%s%03d", prefix, i), "predicate": pred}
	}
	return out
}

// TestConformanceAcquireMany covers acquire_many: grant shape and order,
// all or nothing, the worst verdict and the 64-intent limit.
func TestConformanceAcquireMany(t *testing.T) {
	_, c := confStart(t)
	c.register("old", 1)
	c.register("mid", 5)
	c.register("young", 9)
	req := map[string]any{"agent_id": "mid", "session_id": "s", "ttl": 60000,
		"intents": []any{
			map[string]any{"resource_type": "file", "resource_path": "/b/./c", "predicate": "mutates"},
			map[string]any{"resource_type": "SYMBOL", "resource_path": "pkg.A", "predicate": "CONSUMES"},
			map[string]any{"resource_type": "FILE", "resource_path": "/a", "predicate": "DELETES"},
		}}
	r := c.ok("acquire_many", req)
	cfCheckShape(t, "acquire_many grant", r, cfShape{"success": cfBool, "leases": cfArr})
	ls := r["leases"].([]any)
	wantRes := []string{"FILE:/b/c", "SYMBOL:pkg.A", "FILE:/a"}
	wantPred := []string{"MUTATES", "CONSUMES", "DELETES"}
	if len(ls) != 3 {
		t.Fatalf("acquire_many leases = %v; want 3", ls)
	}
	for i, l := range ls {
		m, ok := l.(map[string]any)
		if !ok {
			t.Fatalf("lease %d = %v (%T); want a map", i, l, l)
		}
		cfCheckGrant(t, fmt.Sprintf("acquire_many lease %d", i), m)
		if m["resource"] != wantRes[i] || m["predicate"] != wantPred[i] || m["agent_id"] != "mid" || m["session_id"] != "s" {
			t.Errorf("lease %d = %v; want %s %s", i, m, wantRes[i], wantPred[i])
		}
	}

	// All or nothing: /free is not taken when /b/c is denied.
	both := func(agent string, paths ...string) map[string]any {
		var in []any
		for _, p := range paths {
			in = append(in, map[string]any{"resource_type": "FILE", "resource_path": p, "predicate": "MUTATES"})
		}
		return map[string]any{"agent_id": agent, "session_id": "s", "ttl": 60000, "intents": in}
	}
	cfCheckDenial(t, "old on free+held", c.ok("acquire_many", both("old", "/free", "/b/c")), "WAIT")
	if n := cfNum(t, c.ok("active_lease_count", nil), "count"); n != 3 {
		t.Errorf("count after a denied acquire_many = %d; want 3 (nothing created)", n)
	}
	// Worst verdict: WAIT on one (held by younger), DIE on another (held
	// by older), in either order.
	c.grant(cfAcq("old", "s", "/o", "MUTATES", 60000))
	c.grant(cfAcq("young", "s", "/y", "MUTATES", 60000))
	for _, order := range [][]string{{"/y", "/o"}, {"/o", "/y"}} {
		d := cfCheckDenial(t, fmt.Sprint("worst verdict ", order), c.ok("acquire_many", both("mid", order...)), "DIE")
		if d["held_by"] != "old" {
			t.Errorf("worst verdict %v held_by %v; want old", order, d["held_by"])
		}
	}

	// 64 intents are allowed, 65 and 0 are not.
	r = c.ok("acquire_many", map[string]any{"agent_id": "young", "session_id": "s", "ttl": 60000, "intents": intents("/n", "CONSUMES", 64)})
	if len(leaseIDs(t, r)) != 64 {
		t.Errorf("64 intents gave %d leases", len(leaseIDs(t, r)))
	}
	c.fail("acquire_many", map[string]any{"agent_id": "young", "session_id": "s", "ttl": 60000, "intents": intents("/q", "CONSUMES", 65)}, "INVALID_ARGUMENT")
	c.fail("acquire_many", map[string]any{"agent_id": "young", "session_id": "s", "ttl": 60000, "intents": []any{}}, "INVALID_ARGUMENT")
}

// TestConformanceReleaseHeartbeat covers release and heartbeat.
func TestConformanceReleaseHeartbeat(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	g := c.grant(cfAcq("a", "s", "/h", "MUTATES", 60000))
	id := g["lease_id"]

	before := cfNow()
	hb := c.ok("heartbeat", map[string]any{"lease_id": id})
	cfCheckShape(t, "heartbeat", hb, cfShape{"lease_id": cfStr, "expires_at": cfUint})
	if e := cfNum(t, hb, "expires_at"); hb["lease_id"] != id || e < before+60000 || e > cfNow()+60000 {
		t.Errorf("heartbeat = %v; want expires_at now + 60000 (now %d)", hb, before)
	}
	before = cfNow()
	hb = c.ok("heartbeat", map[string]any{"lease_id": id, "ttl": 5000})
	if e := cfNum(t, hb, "expires_at"); e < before+5000 || e > cfNow()+5000 {
		t.Errorf("heartbeat ttl 5000 = %v; want now + 5000 (now %d)", hb, before)
	}
	before = cfNow()
	hb = c.ok("heartbeat", map[string]any{"lease_id": id})
	if e := cfNum(t, hb, "expires_at"); e < before+5000 || e > cfNow()+5000 {
		t.Errorf("heartbeat after ttl 5000 = %v; want the new ttl 5000 kept (now %d)", hb, before)
	}

	// A heartbeat keeps a short lease alive past its first expiry.
	s := c.grant(cfAcq("a", "s", "/short", "MUTATES", 300))
	c.ok("heartbeat", map[string]any{"lease_id": s["lease_id"], "ttl": 60000})
	cfWaitPast(t, cfNum(t, s, "expires_at")+50)
	c.ok("heartbeat", map[string]any{"lease_id": s["lease_id"]})

	r := c.ok("release", map[string]any{"lease_id": id})
	cfCheckShape(t, "release", r, cfShape{"released": cfBool})
	if r["released"] != true {
		t.Errorf("release = %v; want true", r)
	}
	if r := c.ok("release", map[string]any{"lease_id": id}); r["released"] != false {
		t.Errorf("second release = %v; want false", r)
	}
	if r := c.ok("release", map[string]any{"lease_id": "00000000-0000-4000-8000-000000000000"}); r["released"] != false {
		t.Errorf("release of an unknown lease = %v; want false", r)
	}
	c.fail("heartbeat", map[string]any{"lease_id": id}, "NOT_FOUND")
	c.fail("heartbeat", map[string]any{"lease_id": "00000000-0000-4000-8000-000000000000"}, "NOT_FOUND")

	// Expired: NOT_FOUND, release false.
	e := c.grant(cfAcq("a", "s", "/e", "MUTATES", 50))
	cfWaitPast(t, cfNum(t, e, "expires_at"))
	c.fail("heartbeat", map[string]any{"lease_id": e["lease_id"]}, "NOT_FOUND")
	if r := c.ok("release", map[string]any{"lease_id": e["lease_id"]}); r["released"] != false {
		t.Errorf("release of an expired lease = %v; want false", r)
	}
}
