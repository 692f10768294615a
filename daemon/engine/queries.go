package engine

import (
	"cmp"
	"math"
	"slices"
	"strings"
)

// ActiveLeaseCount returns how many leases are active at now; expired
// leases not yet removed are not counted. It costs O(expired), not O(leases).
func (e *Engine) ActiveLeaseCount(now int64) int {
	return e.leases.len() - e.leaseDeadlines.countDue(now)
}

// ListLeases returns the active leases matching f after f.After, sorted
// by resource then fence: the first f.Limit of them (1000 when 0), and
// whether more matched. It walks as far as it takes; LeasesPage is the
// same walk with a bound on the work.
func (e *Engine) ListLeases(now int64, f LeaseFilter) ([]Lease, bool, error) {
	p, err := e.LeasesPage(now, f, 0)
	return p.Leases, p.More, err
}

// LeasePage is one page of list_leases.
type LeasePage struct {
	Leases []Lease
	// More says the walk stopped before the end (at the limit, or when its
	// work ran out): the rest comes after Next, the position of the last
	// lease returned or, when the work ran out first, of the last one
	// looked at.
	More bool
	Next LeasePos
}

// LeasesPage returns up to f.Limit (1000 when 0) active leases matching f
// that come strictly after f.After in list order (resource key, then
// fence). It looks at no more than about work resources and leases (0: no
// bound, besides the limit), so it may return fewer than the limit, even
// none, with More set. Filtering by prefix costs nothing: the walk starts
// at the prefix and ends after it. Filtering by agent walks that agent's
// leases when they are few enough to sort within the bound, else every
// key in order.
//
// Because the order is by values that never change while a lease lives,
// paging with Next lists every lease that stays active from the first page
// to the last exactly once, whatever else is granted or ended between the
// pages; a lease granted or ended meanwhile is listed at most once.
func (e *Engine) LeasesPage(now int64, f LeaseFilter, work int) (LeasePage, error) {
	limit, err := checkLimit(f.Limit)
	if err != nil {
		return LeasePage{}, err
	}
	if err := checkFilter(f.AgentID, f.ResourcePrefix); err != nil {
		return LeasePage{}, err
	}
	if f.AgentID != "" {
		a := e.agents[f.AgentID]
		if a == nil {
			return LeasePage{}, nil
		}
		if work == 0 || a.nLeases <= work {
			return e.agentPage(now, a, &f, limit), nil
		}
	}
	return e.walkLeases(now, &f, limit, work), nil
}

// agentPage lists the matching leases of one agent: all of them, sorted.
func (e *Engine) agentPage(now int64, a *agent, f *LeaseFilter, limit int) LeasePage {
	var ls []*lease
	a.eachLease(func(l *lease) {
		if l.ExpiresAt > now && strings.HasPrefix(l.res.key, f.ResourcePrefix) && f.After.after(l.res.key, l.Fence) {
			ls = append(ls, l)
		}
	})
	slices.SortFunc(ls, func(x, y *lease) int {
		return cmp.Or(strings.Compare(x.res.key, y.res.key), cmp.Compare(x.Fence, y.Fence))
	})
	var p LeasePage
	if len(ls) > limit {
		ls = ls[:limit]
		p.More = true
		p.Next = LeasePos{Resource: ls[limit-1].res.key, Fence: ls[limit-1].Fence}
	}
	p.Leases = make([]Lease, len(ls))
	for i, l := range ls {
		p.Leases[i] = e.public(l)
	}
	return p
}

// walkLeases walks the resource keys in order from f.After (or the
// prefix), collecting the matching leases. Next follows the walk: the
// last lease taken, or a key whose leases were all looked at.
func (e *Engine) walkLeases(now int64, f *LeaseFilter, limit, work int) LeasePage {
	p := LeasePage{Next: f.After}
	from := f.After.Resource
	if f.After.Fence == math.MaxUint64 {
		from += "\x00" // every lease of that key was looked at: start after it
	}
	var buf []*lease
	seen := 0
	e.byKey.AscendGreaterOrEqual(&resource{key: max(from, f.ResourcePrefix)}, func(r *resource) bool {
		if !strings.HasPrefix(r.key, f.ResourcePrefix) {
			return false // past every key with the prefix
		}
		if work > 0 && seen >= work {
			p.More = true
			return false
		}
		seen += 1 + len(r.holders())
		buf = buf[:0]
		for _, l := range r.holders() {
			if l.ExpiresAt > now && (f.AgentID == "" || l.agent().id == f.AgentID) && f.After.after(r.key, l.Fence) {
				buf = append(buf, l)
			}
		}
		slices.SortFunc(buf, func(x, y *lease) int { return cmp.Compare(x.Fence, y.Fence) })
		for _, l := range buf {
			if len(p.Leases) == limit {
				p.More = true
				return false
			}
			p.Leases = append(p.Leases, e.public(l))
			p.Next = LeasePos{Resource: r.key, Fence: l.Fence}
		}
		p.Next = LeasePos{Resource: r.key, Fence: math.MaxUint64}
		return true
	})
	return p
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
	p, err := e.AgentsPage(now, AgentPos{}, limit)
	return p.Agents, p.More, err
}

// AgentPage is one page of list_agents: More says more agents follow
// Next, the last one listed.
type AgentPage struct {
	Agents []Agent
	More   bool
	Next   AgentPos
}

// AgentsPage returns up to limit (1000 when 0) registered agents that come
// strictly after pos in list order (priority, then id), with their active
// lease and queued request counts. It costs O(log agents + limit), plus
// the leases expired and not yet removed. Paging with Next lists every
// agent registered from the first page to the last exactly once (an
// agent whose priority changes meanwhile moves in the order).
func (e *Engine) AgentsPage(now int64, after AgentPos, limit int) (AgentPage, error) {
	limit, err := checkLimit(limit)
	if err != nil {
		return AgentPage{}, err
	}
	var p AgentPage
	e.byPriority.AscendGreaterOrEqual(&agent{priority: after.Priority, id: after.ID}, func(a *agent) bool {
		if !after.before(a) {
			return true // the agent at the cursor itself
		}
		if len(p.Agents) == limit {
			p.More = true
			return false
		}
		p.Agents = append(p.Agents, e.agentInfo(now, a))
		p.Next = AgentPos{Priority: a.priority, ID: a.id}
		return true
	})
	return p, nil
}

// Stats returns the engine's counters. Leases counts every lease not yet
// removed (Stats takes no time; ActiveLeaseCount excludes expired ones);
// Processes the processes leases or queued requests are bound to; Grants
// counts granted requests, Waits and Dies the answers with those reasons,
// Expirations the leases removed on expiry, ExitReleases the active leases
// ended because their process ended, Fence the last fencing token issued.
func (e *Engine) Stats() Stats {
	return Stats{
		Agents: e.registered, Leases: e.leases.len(), Waiters: len(e.waiters), Processes: e.boundCount(),
		Grants: e.grants, Waits: e.waits, Dies: e.dies, Expirations: e.expirations,
		ExitReleases: e.exitReleases, Fence: e.fence,
		Conflicts: e.conflicts, Locked: e.locked, SessionExpired: e.sessionExpired,
		Releases: e.releases, Revocations: e.revocations,
	}
}
