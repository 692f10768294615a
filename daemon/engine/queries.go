package engine

import (
	"cmp"
	"slices"
	"strings"
)

// ActiveLeaseCount returns how many leases are active at now; expired
// leases not yet removed are not counted. It costs O(expired), not O(leases).
func (e *Engine) ActiveLeaseCount(now int64) int {
	return e.leases.len() - e.leaseDeadlines.countDue(now)
}

// ListLeases returns the active leases matching f, sorted by resource then
// fence: the first f.Limit of them (1000 when 0), and whether more matched.
func (e *Engine) ListLeases(now int64, f LeaseFilter) ([]Lease, bool, error) {
	limit, err := checkLimit(f.Limit)
	if err != nil {
		return nil, false, err
	}
	if err := checkFilter(f.AgentID, f.ResourcePrefix); err != nil {
		return nil, false, err
	}
	var out []Lease
	add := func(l *lease) {
		if l.ExpiresAt > now && strings.HasPrefix(l.Resource, f.ResourcePrefix) {
			out = append(out, l.Lease)
		}
	}
	if f.AgentID != "" {
		if a := e.agents[f.AgentID]; a != nil {
			for _, l := range a.leases {
				add(l)
			}
		}
	} else {
		e.leases.each(add)
	}
	slices.SortFunc(out, func(x, y Lease) int {
		if c := strings.Compare(x.Resource, y.Resource); c != 0 {
			return c
		}
		return cmp.Compare(x.Fence, y.Fence)
	})
	if len(out) > limit {
		return out[:limit:limit], true, nil
	}
	return out, false, nil
}

// CheckFilter validates the optional filters of list_leases and watch: an
// agent id and a resource key prefix ("" for none). A bad one is an
// INVALID_ARGUMENT *Error naming it.
func CheckFilter(agentID, resourcePrefix string) error {
	if err := checkFilter(agentID, resourcePrefix); err != nil {
		return err
	}
	return nil
}

func checkFilter(agentID, resourcePrefix string) *Error {
	if agentID != "" {
		if err := checkText("agent_id", agentID, MaxIDLen); err != nil {
			return err
		}
	}
	if resourcePrefix != "" {
		if err := checkText("resource_prefix", resourcePrefix, maxPrefixLen); err != nil {
			return err
		}
	}
	return nil
}

// ListAgents returns the registered agents sorted by priority (then id),
// with their active lease and queued request counts: the first limit of
// them (1000 when 0), and whether there were more.
func (e *Engine) ListAgents(now int64, limit int) ([]Agent, bool, error) {
	limit, err := checkLimit(limit)
	if err != nil {
		return nil, false, err
	}
	out := make([]Agent, 0, min(e.registered, limit+1))
	for _, a := range e.agents {
		if !a.unregistered {
			out = append(out, e.agentInfo(now, a))
		}
	}
	slices.SortFunc(out, func(x, y Agent) int {
		if c := cmp.Compare(x.Priority, y.Priority); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	if len(out) > limit {
		return out[:limit:limit], true, nil
	}
	return out, false, nil
}

// Stats returns the engine's counters. Leases counts every lease not yet
// removed (Stats takes no time; ActiveLeaseCount excludes expired ones);
// Processes the processes leases or queued requests are bound to; Grants
// counts granted requests, Waits and Dies the answers with those reasons,
// Expirations the leases removed on expiry, ExitReleases the active leases
// ended because their process ended, Fence the last fencing token issued.
func (e *Engine) Stats() Stats {
	return Stats{
		Agents: e.registered, Leases: e.leases.len(), Waiters: len(e.waiters), Processes: len(e.procs),
		Grants: e.grants, Waits: e.waits, Dies: e.dies, Expirations: e.expirations,
		ExitReleases: e.exitReleases, Fence: e.fence,
		Conflicts: e.conflicts, Locked: e.locked, SessionExpired: e.sessionExpired,
		Releases: e.releases, Revocations: e.revocations,
	}
}
