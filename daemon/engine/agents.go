package engine

import (
	"strconv"
	"strings"

	"github.com/klockd/klock/protocol"
)

func quote(s string) string { return strconv.Quote(s) }

// Register registers agentID for the caller's uid and returns its
// registration. Without a priority (hasPriority false) a new agent gets the
// registration time in ms, strictly increasing over such registrations.
// Registering again without a priority, or with the same one, returns the
// current registration unchanged; with a different priority it is applied
// only while the agent holds and waits for nothing (else PRIORITY_CONFLICT).
// Only the owning uid or root may register an existing agent again. A new
// agent beyond Config.MaxAgents registered ones is RESOURCE_EXHAUSTED.
func (e *Engine) Register(now int64, c Caller, agentID string, priority int64, hasPriority bool) (Agent, error) {
	if err := checkText("agent_id", agentID, MaxIDLen); err != nil {
		return Agent{}, err
	}
	if hasPriority && priority < 0 {
		return Agent{}, invalidf("klock: priority %d is negative; allowed 0..%d", priority, int64(1<<63-1))
	}
	a := e.agents[agentID]
	if a != nil && !a.unregistered {
		if !mayActFor(c, a) {
			return Agent{}, permissionDenied(c, "register agent "+quote(agentID)+", which belongs to another uid")
		}
		if !hasPriority || priority == a.priority {
			return e.agentInfo(now, a), nil
		}
		if e.busy(now, a) {
			return Agent{}, errorf(protocol.CodePriorityConflict,
				"klock: agent %q holds or waits for leases; its priority %d cannot change to %d until it has none",
				agentID, a.priority, priority)
		}
		r := Record{Kind: RecRegister, Time: a.registeredAt, AgentID: agentID, Priority: priority, UID: a.uid}
		e.applyRegister(&r)
		e.record(r)
		return e.agentInfo(now, a), nil
	}
	// Leftovers (unregistered agents kept only until the expiry sweep
	// removes their expired leases) do not count: unregistering must free a
	// slot at once, and a leftover costs one small struct (it has forgotten
	// its ended sessions) that lives only until the next sweep. Registering
	// a leftover's id again makes a new agent and counts. Like the other
	// limits, this one binds live requests only: Apply and Restore load
	// whatever was recorded, even under a lower limit.
	if e.cfg.MaxAgents > 0 && e.registered >= e.cfg.MaxAgents {
		return Agent{}, limitReached("agent", e.cfg.MaxAgents, "unregister agents", "max-agents")
	}
	r := Record{Kind: RecRegister, Time: now, AgentID: agentID, Priority: priority, UID: c.UID}
	if !hasPriority {
		r.Priority = e.autoPriority(now)
		r.Auto = true
	}
	a = e.applyRegister(&r)
	e.record(r)
	return e.agentInfo(now, a), nil
}

// applyRegister registers or re-registers an agent from a record.
func (e *Engine) applyRegister(r *Record) *agent {
	a := e.agents[r.AgentID]
	switch {
	case a == nil:
		e.agentSeq++
		a = &agent{id: strings.Clone(r.AgentID), seq: e.agentSeq} // outlives the request
		e.agents[a.id] = a
		e.registered++
	case a.unregistered:
		a.unregistered = false
		e.registered++
	default:
		e.byPriority.Delete(a) // its priority may change
	}
	if a.priority != r.Priority && a.nLeases > 0 {
		// Summaries are sorted by priority; this agent's leases have all
		// expired (it is not busy) but are not removed yet.
		e.reindexAgent(a, true)
		a.priority = r.Priority
		e.reindexAgent(a, false)
	}
	a.priority, a.registeredAt, a.uid = r.Priority, r.Time, r.UID
	e.byPriority.ReplaceOrInsert(a)
	if r.Auto && r.Priority > e.lastAuto {
		e.lastAuto = r.Priority
	}
	return a
}

// Unregister removes agentID's registration, reporting false when it was
// not registered. It is refused with PRIORITY_CONFLICT while the agent
// holds or waits for a lease, and only the owning uid or root may do it.
func (e *Engine) Unregister(now int64, c Caller, agentID string) (bool, error) {
	if err := checkText("agent_id", agentID, MaxIDLen); err != nil {
		return false, err
	}
	a := e.agents[agentID]
	if a == nil || a.unregistered {
		return false, nil
	}
	if !mayActFor(c, a) {
		return false, permissionDenied(c, "unregister agent "+quote(agentID)+", which belongs to another uid")
	}
	if e.busy(now, a) {
		return false, errorf(protocol.CodePriorityConflict,
			"klock: agent %q holds or waits for leases; release them before unregistering it", agentID)
	}
	r := Record{Kind: RecUnregister, Time: now, AgentID: agentID}
	e.applyUnregister(&r)
	e.record(r)
	return true, nil
}

func (e *Engine) applyUnregister(r *Record) bool {
	a := e.agents[r.AgentID]
	if a == nil || a.unregistered {
		return false
	}
	e.registered--
	e.byPriority.Delete(a)
	// A later agent with the same id starts afresh, even when this struct
	// is kept as a leftover and registered again.
	a.ended = endedSessions{}
	if a.nLeases > 0 {
		// Expired leases not removed yet still point at the agent.
		a.unregistered = true
		return true
	}
	delete(e.agents, a.id)
	return true
}

// dropLeftover removes an unregistered agent once its last lease is gone.
func (e *Engine) dropLeftover(a *agent) {
	if a.unregistered && a.nLeases == 0 && len(a.waiters) == 0 && e.agents[a.id] == a {
		delete(e.agents, a.id)
	}
}

// busy reports whether the agent holds an active lease or waits.
func (e *Engine) busy(now int64, a *agent) bool {
	return len(a.waiters) > 0 || e.activeLeases(now, a) > 0
}

// activeLeases counts the agent's active leases: its present ones less
// those expired and not yet removed, which are found in the expiry queue
// (O(expired), not O(the agent's leases)).
func (e *Engine) activeLeases(now int64, a *agent) int {
	n := a.nLeases
	if n == 0 {
		return 0
	}
	e.leaseDeadlines.eachDue(now, func(l *lease) {
		if l.agent() == a {
			n--
		}
	})
	return n
}

func (e *Engine) agentInfo(now int64, a *agent) Agent {
	return Agent{
		ID: a.id, Priority: a.priority, RegisteredAt: a.registeredAt, OwnerUID: a.uid,
		Leases: e.activeLeases(now, a), Waiting: len(a.waiters),
	}
}

// mayActFor reports whether the caller may act for the agent: its owner
// uid or root.
func mayActFor(c Caller, a *agent) bool { return c.UID == 0 || c.UID == a.uid }

// isAdmin reports whether the caller may use admin ops.
func (e *Engine) isAdmin(c Caller) bool { return c.UID == 0 || c.UID == e.cfg.AdminUID }
