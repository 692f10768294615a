package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/klockd/klock/protocol"
)

// ExplainRequest asks what Acquire would answer, without acquiring: the
// agent (optional), its session (optional), the resource and the predicate
// (MUTATES when empty).
type ExplainRequest struct {
	AgentID, SessionID         string
	ResourceType, ResourcePath string
	Predicate                  string
}

// Explanation is the dry run of one acquire: who holds and awaits the
// resource, and the verdict the requester would get, with the step of
// DESIGN.md that decided it and a sentence for humans.
type Explanation struct {
	Resource  string    // the resource key
	Predicate Predicate // the requested predicate
	AgentID   string    // the requester ("" when none was named)
	Priority  int64     // the requester's priority (for none: what a new agent would get now)

	Holders []Holder  // every active lease on a key overlapping Resource
	Queue   []Waiting // every request queued on a key overlapping Resource, oldest first

	Reason   protocol.Reason // "" when the acquire would be granted
	WaitTime int64           // the wait_time a denial would carry (0 on grant)
	HeldBy   string          // the agent whose lease or queued request decided a denial
	Step     Step
	Message  string // one sentence saying why
}

// Holder is one active lease as explain lists it: the lease, its agent's
// priority, and whether it conflicts with the request explained.
type Holder struct {
	Lease
	Priority  int64
	Conflicts bool // would block the request (the requester's own session is re-entrant and never does)
}

// Waiting is one queued request: who, for which resource and predicate,
// since when and until when, and whom its current verdict waits for.
type Waiting struct {
	AgentID, SessionID string
	Priority           int64
	Resource           string
	Predicate          Predicate
	Since, Deadline    int64  // Unix ms: queued at, answered WAIT at
	WaitsFor           string // the agent whose lease it waits for ("" if the verdict is no longer WAIT)
	Conflicts          bool   // in an Explanation: conflicts with the request explained
}

// Explain decides an acquire of one resource as Acquire would, at now,
// and changes nothing: no lease, no queue entry, no record, no event, no
// counter. It runs the same decision code as Acquire (decide), so an
// Acquire with the same arguments right after gets the same reason and
// held_by, unless a limit (max-leases, max-waiters) refuses it first.
//
// Without an agent the requester is a new agent registered now: its
// priority is what register_agent would assign, so it is younger than
// every registered agent. Without a session it is a new session of the
// agent (its leases in any session conflict as another session's).
// Explain needs no permission: it shows what list_leases shows anyone.
// Invalid arguments are INVALID_ARGUMENT, an unregistered agent
// UNKNOWN_AGENT.
func (e *Engine) Explain(now int64, req ExplainRequest) (Explanation, error) {
	x, err := e.explain(now, &req)
	if err != nil {
		return Explanation{}, err
	}
	return x, nil
}

func (e *Engine) explain(now int64, req *ExplainRequest) (Explanation, *Error) {
	if req.AgentID != "" {
		if err := checkText("agent_id", req.AgentID, MaxIDLen); err != nil {
			return Explanation{}, err
		}
	}
	if req.SessionID != "" {
		if err := checkText("session_id", req.SessionID, MaxIDLen); err != nil {
			return Explanation{}, err
		}
	}
	key, r, err := e.internKey(-1, req.ResourceType, req.ResourcePath)
	if err != nil {
		return Explanation{}, err
	}
	pred := Mutates
	if req.Predicate != "" {
		if pred, err = parsePredicate(-1, req.Predicate); err != nil {
			return Explanation{}, err
		}
	}
	a := &agent{priority: e.autoPriority(now)} // a new agent, registered nowhere
	if req.AgentID != "" {
		a = e.agents[req.AgentID]
		if a == nil || a.unregistered {
			return Explanation{}, unknownAgent(req.AgentID)
		}
	}
	t := target{key: key, pred: pred, res: r}
	v := e.decide(now, a, req.SessionID, a.priority, []target{t}, nil)
	x := Explanation{
		Resource: key, Predicate: pred, AgentID: a.id, Priority: a.priority,
		Holders: e.holders(now, a, req.SessionID, t),
		Queue:   e.queueOn(now, a, t),
		Reason:  v.reason, HeldBy: "", Step: v.step,
	}
	if v.reason != "" {
		d := e.denial(now, a, req.SessionID, &v)
		x.WaitTime, x.HeldBy = d.WaitTime, d.HeldBy
	}
	x.Message = explainSentence(now, a, req.SessionID, &v, x.WaitTime)
	return x, nil
}

// autoPriority is the priority register_agent assigns a new agent at now
// when none is given: the time, strictly above every earlier one.
func (e *Engine) autoPriority(now int64) int64 { return max(now, e.lastAuto+1) }

// holders lists the active leases on keys overlapping t's (the key, the
// subtree keys above it, and for a subtree key the keys below it), sorted
// by fence, each marked with whether it conflicts with t for agent a in
// session.
func (e *Engine) holders(now int64, a *agent, session string, t target) []Holder {
	var out []Holder
	add := func(l *lease) {
		if l.ExpiresAt <= now {
			return
		}
		reentrant := l.agent() == a && l.sess().name == session
		out = append(out, Holder{Lease: e.public(l), Priority: l.agent().priority,
			Conflicts: !reentrant && Conflicts(l.pred(), t.pred)})
	}
	e.eachOverlapping(t, func(r *resource) {
		for _, l := range r.holders() {
			add(l)
		}
	})
	if t.res != nil {
		eachLeaseBelow(t.res, add)
	}
	slices.SortFunc(out, func(x, y Holder) int { return cmp.Compare(x.Fence, y.Fence) })
	return out
}

// queueOn lists the requests queued on keys overlapping t's (the key, the
// subtree keys above it, and for a subtree key the keys below it), oldest
// first (by priority, then by arrival; a request queued on several of
// them by key), each marked with whether it conflicts with t for agent a.
func (e *Engine) queueOn(now int64, a *agent, t target) []Waiting {
	var qs []queued
	var keys []string
	add := func(r *resource) {
		for _, q := range r.queue() {
			qs = append(qs, q)
			keys = append(keys, r.key)
		}
	}
	e.eachOverlapping(t, add)
	if t.res != nil {
		seen := make(map[*resource]bool)
		e.eachQueuedBelow(t.res, func(r *resource) {
			if !seen[r] {
				seen[r] = true
				add(r)
			}
		})
	}
	order := make([]int, len(qs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int {
		return cmp.Or(cmp.Compare(qs[i].w.priority, qs[j].w.priority), cmp.Compare(qs[i].w.id, qs[j].w.id),
			strings.Compare(keys[i], keys[j]), cmp.Compare(qs[i].pred, qs[j].pred))
	})
	out := make([]Waiting, 0, len(qs))
	for _, i := range order {
		w := e.waiting(now, keys[i], qs[i])
		w.Conflicts = qs[i].w.agent != a && Conflicts(qs[i].pred, t.pred)
		out = append(out, w)
	}
	return out
}

// eachOverlapping calls fn for t's resource, if it has one, and for every
// subtree key above it.
func (e *Engine) eachOverlapping(t target, fn func(*resource)) {
	above := e.nodeAbove(t.key)
	if t.res != nil {
		fn(t.res)
		above = t.res.parent
	}
	for n := above; n != nil; n = n.parent {
		fn(n)
	}
}

// eachLeaseBelow calls fn for every lease strictly below the subtree key r
// (expired ones too), reading r's summary.
func eachLeaseBelow(r *resource, fn func(*lease)) {
	s := r.below()
	if s == nil {
		return
	}
	var walk func(h *heldBy)
	walk = func(h *heldBy) {
		for _, l := range h.leases {
			fn(l)
		}
		for _, k := range h.kids {
			walk(k)
		}
	}
	for c := range s.held {
		for _, h := range s.held[c] {
			walk(h)
		}
	}
}

// waiting describes one entry of the queue on key; WaitsFor comes from
// deciding the request again now, as the engine would.
func (e *Engine) waiting(now int64, key string, q queued) Waiting {
	w := q.w
	out := Waiting{
		AgentID: w.agent.id, SessionID: w.session, Priority: w.priority, Resource: key,
		Predicate: q.pred, Since: w.since, Deadline: w.deadline,
	}
	if v := e.decide(now, w.agent, w.session, w.priority, w.targets, w); v.reason == protocol.ReasonWait && v.by != nil {
		out.WaitsFor = v.by.id
	}
	return out
}

// ListWaiting returns the queued requests, one entry per resource each is
// queued on, sorted by resource then queue order: the first limit of them
// (1000 when 0), and whether there were more.
func (e *Engine) ListWaiting(now int64, limit int) ([]Waiting, bool, error) {
	limit, err := checkLimit(limit)
	if err != nil {
		return nil, false, err
	}
	var keys []string
	for r := range e.resources.all() {
		if len(r.queue()) > 0 {
			keys = append(keys, r.key)
		}
	}
	slices.Sort(keys)
	var out []Waiting
	for _, k := range keys {
		for _, q := range e.resources.get(k).queue() {
			if len(out) == limit {
				return out, true, nil
			}
			out = append(out, e.waiting(now, k, q))
		}
	}
	return out, false, nil
}

// explainSentence says in one sentence why v is the verdict for agent a
// (the requester, "you"), e.g. "FILE:/a is held by builder (priority 100,
// MUTATES, 2m0s left); you (priority 200) are younger, so Wait-Die says
// abort and retry in 1s".
func explainSentence(now int64, a *agent, session string, v *verdict, waitTime int64) string {
	who := a.id
	if who == "" {
		who = "a new agent"
	}
	you := fmt.Sprintf("you (%s, priority %d)", who, a.priority)
	holder := func() string {
		if v.by == nil {
			return "?"
		}
		if v.byQueued {
			return fmt.Sprintf("%s (priority %d, %s, queued)", v.by.id, v.by.priority, v.byPred)
		}
		if v.byExpires == Never {
			return fmt.Sprintf("%s (priority %d, %s, until its process exits)", v.by.id, v.by.priority, v.byPred)
		}
		return fmt.Sprintf("%s (priority %d, %s, %s left)", v.by.id, v.by.priority, v.byPred, left(v.byExpires-now))
	}
	switch v.reason {
	case "":
		return fmt.Sprintf("GRANT: nothing on %s conflicts with %s, so %s would get the lease at once", v.key, v.pred, you)
	case protocol.ReasonResourceLocked:
		return fmt.Sprintf("RESOURCE_LOCKED: %s is frozen by an operator; no lease on it can be acquired until it is thawed", where(v))
	case protocol.ReasonSessionExpired:
		return fmt.Sprintf("SESSION_EXPIRED: session %q of %s has ended; start a new session", session, a.id)
	case protocol.ReasonConflict:
		return fmt.Sprintf("CONFLICT: %s is held by %s itself in session %q (%s); an agent cannot wait for itself, so release it or use that session",
			where(v), a.id, v.bySession, v.byPred)
	case protocol.ReasonDie:
		what := "is held by"
		if v.byQueued {
			what = "is awaited first by"
		}
		age := "are younger"
		if v.by.priority == a.priority {
			age = "have equal priority"
		}
		return fmt.Sprintf("DIE: %s %s %s; %s %s, so Wait-Die says abort and retry in %s",
			where(v), what, holder(), you, age, left(waitTime))
	case protocol.ReasonWait:
		return fmt.Sprintf("WAIT: %s is held by %s; %s are older than every holder, so Wait-Die lets you wait for it",
			where(v), holder(), you)
	}
	return string(v.reason)
}

// left formats a duration in ms the way people read time left: "2m0s",
// "1.5s", "300ms".
func left(ms int64) string {
	switch {
	case ms <= 0:
		return "0s"
	case ms < 1000:
		return fmt.Sprintf("%dms", ms)
	case ms < 60_000:
		return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", float64(ms)/1000), "0"), ".") + "s"
	}
	s := ms / 1000
	if s < 3600 {
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
}
