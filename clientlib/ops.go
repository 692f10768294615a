package clientlib

import (
	"context"
	"errors"
	"iter"
	"time"

	"github.com/klockd/klock/protocol"
)

// millis converts d to whole milliseconds, rounding a positive fraction up so
// that a short positive duration never becomes 0.
func millis(d time.Duration) int64 {
	if d <= 0 {
		return int64(d / time.Millisecond)
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// fromMillis converts Unix milliseconds to a time.Time (zero for 0).
func fromMillis(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// Hello asks the daemon who it is (version, protocol, pid, max frame). It
// announces Options.ClientName when set.
func (c *Client) Hello(ctx context.Context) (*protocol.HelloResult, error) {
	var args protocol.Args
	if c.opts.ClientName != "" {
		args.Client = c.opts.ClientName
		args.Set(protocol.ArgClient)
	}
	var res protocol.HelloResult
	if err := c.do(ctx, protocol.OpHello, &args, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// RegisterAgent registers agentID with priority (lower = older = higher
// precedence), as the seed SDK's register_agent. Registering again with the
// same priority is a no-op; a different one is ErrPriorityConflict while the
// agent holds or waits for a lease.
func (c *Client) RegisterAgent(ctx context.Context, agentID string, priority int64) error {
	_, err := c.Register(ctx, agentID, &priority)
	return err
}

// Register registers agentID and returns its registration. With a nil
// priority the daemon assigns the registration time in ms, or returns the
// existing registration unchanged.
func (c *Client) Register(ctx context.Context, agentID string, priority *int64) (*protocol.RegisterResult, error) {
	args := protocol.Args{AgentID: agentID}
	args.Set(protocol.ArgAgentID)
	if priority != nil {
		args.Priority = *priority
		args.Set(protocol.ArgPriority)
	}
	var res protocol.RegisterResult
	if err := c.do(ctx, protocol.OpRegisterAgent, &args, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// UnregisterAgent removes agentID and reports whether it was registered. It
// fails with ErrPriorityConflict while the agent holds or waits for a lease.
func (c *Client) UnregisterAgent(ctx context.Context, agentID string) (bool, error) {
	args := protocol.Args{AgentID: agentID}
	args.Set(protocol.ArgAgentID)
	var res protocol.UnregisterResult
	err := c.do(ctx, protocol.OpUnregisterAgent, &args, &res)
	return res.Unregistered, err
}

// ReleaseLease releases a lease and reports whether it was active. Releasing
// twice is harmless (the second reports false). If the connection broke and
// the release was resent, it may report false although this call released
// the lease.
func (c *Client) ReleaseLease(ctx context.Context, leaseID string) (bool, error) {
	args := protocol.Args{LeaseID: leaseID}
	args.Set(protocol.ArgLeaseID)
	var res protocol.ReleaseResult
	err := c.do(ctx, protocol.OpRelease, &args, &res)
	return res.Released, err
}

// Heartbeat extends a lease to now + ttl (0 keeps the lease's current ttl)
// and returns its new expiry. It fails with ErrNotFound once the lease has
// expired or been released.
func (c *Client) Heartbeat(ctx context.Context, leaseID string, ttl time.Duration) (time.Time, error) {
	args := protocol.Args{LeaseID: leaseID}
	args.Set(protocol.ArgLeaseID)
	if ttl != 0 {
		args.TTL = millis(ttl)
		args.Set(protocol.ArgTTL)
	}
	var res protocol.HeartbeatResult
	if err := c.do(ctx, protocol.OpHeartbeat, &args, &res); err != nil {
		return time.Time{}, err
	}
	return fromMillis(res.ExpiresAt), nil
}

// EndSession releases every lease of the agent's session and returns how
// many; later acquires in that session are denied with SESSION_EXPIRED
// (klockd remembers the last 1024 sessions each agent ended).
func (c *Client) EndSession(ctx context.Context, agentID, sessionID string) (int, error) {
	args := protocol.Args{AgentID: agentID, SessionID: sessionID}
	args.Set(protocol.ArgAgentID | protocol.ArgSessionID)
	var res protocol.EndSessionResult
	err := c.do(ctx, protocol.OpEndSession, &args, &res)
	return res.Released, err
}

// ActiveLeaseCount returns how many leases are active (never counting
// expired ones).
func (c *Client) ActiveLeaseCount(ctx context.Context) (int, error) {
	var res protocol.CountResult
	err := c.do(ctx, protocol.OpActiveLeaseCount, nil, &res)
	return res.Count, err
}

// EvictExpired removes expired leases and returns how many this call
// removed (the daemon expires leases on time by itself, so often 0).
func (c *Client) EvictExpired(ctx context.Context) (int, error) {
	var res protocol.EvictResult
	err := c.do(ctx, protocol.OpEvictExpired, nil, &res)
	return res.Evicted, err
}

// LeaseFilter selects leases for ListLeases. Zero fields select everything;
// Limit 0 means 1000 and may be at most 10000. After continues a listing
// after the page whose next it is ("" starts from the beginning).
type LeaseFilter struct {
	AgentID string
	Prefix  string // start of the resource key, e.g. "FILE:/src/"
	Limit   int
	After   string
}

// ListLeases returns the active leases matching f, sorted by resource then
// fence, and whether more matched than were returned. ListLeasesPage also
// says where the rest starts; ListAllLeases pages through all of them.
func (c *Client) ListLeases(ctx context.Context, f LeaseFilter) ([]protocol.LeaseInfo, bool, error) {
	res, err := c.listLeases(ctx, f)
	if err != nil {
		return nil, false, err
	}
	return res.Leases, res.Truncated, nil
}

// ListLeasesPage returns one page of the active leases matching f, sorted
// by resource then fence, and the cursor of the next page: pass it as
// f.After to continue. next is "" when nothing follows. A page may hold
// fewer than f.Limit leases, even none, and still have a next: only a page
// without one ends the listing (protocol/README.md "Paging").
func (c *Client) ListLeasesPage(ctx context.Context, f LeaseFilter) (leases []protocol.LeaseInfo, next string, err error) {
	res, err := c.listLeases(ctx, f)
	if err != nil {
		return nil, "", err
	}
	if res.Truncated && res.Next == "" {
		return nil, "", ErrNoCursor
	}
	return res.Leases, res.Next, nil
}

// ListAllLeases pages through every active lease matching f, f.Limit per
// page (0: 1000), starting after f.After. Every lease active from the
// first page to the last is yielded exactly once, in order, even while
// others are granted and released; one granted or ended meanwhile is
// yielded at most once. An error is yielded last.
func (c *Client) ListAllLeases(ctx context.Context, f LeaseFilter) iter.Seq2[protocol.LeaseInfo, error] {
	return allPages(f.After, func(after string) ([]protocol.LeaseInfo, string, error) {
		f.After = after
		return c.ListLeasesPage(ctx, f)
	})
}

// allPages yields the entries of the pages page fetches, the first after
// the cursor after, each following the next of the one before, until a
// page has no next; an error is yielded last.
func allPages[T any](after string, page func(after string) ([]T, string, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		for {
			xs, next, err := page(after)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, x := range xs {
				if !yield(x, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			after = next
		}
	}
}

func (c *Client) listLeases(ctx context.Context, f LeaseFilter) (*protocol.ListLeasesResult, error) {
	args := filterArgs(f.AgentID, f.Prefix)
	if f.Limit != 0 {
		args.Limit = int64(f.Limit)
		args.Set(protocol.ArgLimit)
	}
	if f.After != "" {
		args.After = f.After
		args.Set(protocol.ArgAfter)
	}
	var res protocol.ListLeasesResult
	if err := c.do(ctx, protocol.OpListLeases, &args, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ErrNoCursor is returned by the paging calls when the daemon cut a list
// without a cursor to go on from: a klockd from before paging.
var ErrNoCursor = errors.New("klock: the daemon cut the list without a next cursor to continue from; it predates paging (upgrade klockd)")

// ListAgents returns registered agents sorted by priority, at most limit
// (0 means 1000), and whether there were more.
func (c *Client) ListAgents(ctx context.Context, limit int) ([]protocol.AgentInfo, bool, error) {
	res, err := c.listAgents(ctx, limit, "")
	if err != nil {
		return nil, false, err
	}
	return res.Agents, res.Truncated, nil
}

// ListAgentsPage returns one page of the registered agents after the
// cursor after ("" for the first page), sorted by priority then id, and
// the cursor of the next page ("" when nothing follows), as
// ListLeasesPage does for leases.
func (c *Client) ListAgentsPage(ctx context.Context, limit int, after string) (agents []protocol.AgentInfo, next string, err error) {
	res, err := c.listAgents(ctx, limit, after)
	if err != nil {
		return nil, "", err
	}
	if res.Truncated && res.Next == "" {
		return nil, "", ErrNoCursor
	}
	return res.Agents, res.Next, nil
}

// ListAllAgents pages through every registered agent, limit per page (0:
// 1000), as ListAllLeases does for leases.
func (c *Client) ListAllAgents(ctx context.Context, limit int) iter.Seq2[protocol.AgentInfo, error] {
	return allPages("", func(after string) ([]protocol.AgentInfo, string, error) {
		return c.ListAgentsPage(ctx, limit, after)
	})
}

func (c *Client) listAgents(ctx context.Context, limit int, after string) (*protocol.ListAgentsResult, error) {
	args := limitArgs(limit)
	if after != "" {
		args.After = after
		args.Set(protocol.ArgAfter)
	}
	var res protocol.ListAgentsResult
	if err := c.do(ctx, protocol.OpListAgents, args, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// filterArgs is the args of list_leases' and watch's optional filters ("":
// none).
func filterArgs(agentID, prefix string) protocol.Args {
	var args protocol.Args
	if agentID != "" {
		args.AgentID = agentID
		args.Set(protocol.ArgAgentID)
	}
	if prefix != "" {
		args.ResourcePrefix = prefix
		args.Set(protocol.ArgResourcePrefix)
	}
	return args
}

// limitArgs is the args of a list op that takes only a limit (0: none).
func limitArgs(limit int) *protocol.Args {
	var args protocol.Args
	if limit != 0 {
		args.Limit = int64(limit)
		args.Set(protocol.ArgLimit)
	}
	return &args
}

// Stats returns the daemon's counters.
func (c *Client) Stats(ctx context.Context) (*protocol.StatsResult, error) {
	var res protocol.StatsResult
	if err := c.do(ctx, protocol.OpStats, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Revoke ends a lease now, as if it expired, and reports whether it was
// active. Admin only: root or the daemon's uid, else ErrPermissionDenied.
func (c *Client) Revoke(ctx context.Context, leaseID string) (bool, error) {
	args := protocol.Args{LeaseID: leaseID}
	args.Set(protocol.ArgLeaseID)
	var res protocol.RevokeResult
	err := c.do(ctx, protocol.OpRevoke, &args, &res)
	return res.Revoked, err
}

// Freeze makes every acquire on the resource be denied with
// RESOURCE_LOCKED (leases already held keep running) and returns the
// resource's frozen state after the call. Admin only.
func (c *Client) Freeze(ctx context.Context, resourceType, resourcePath string) (bool, error) {
	return c.freeze(ctx, protocol.OpFreeze, resourceType, resourcePath)
}

// Thaw undoes Freeze and returns the resource's frozen state after the call
// (false). Admin only.
func (c *Client) Thaw(ctx context.Context, resourceType, resourcePath string) (bool, error) {
	return c.freeze(ctx, protocol.OpThaw, resourceType, resourcePath)
}

func (c *Client) freeze(ctx context.Context, op, resourceType, resourcePath string) (bool, error) {
	in, err := resolveIntents([]Intent{{ResourceType: resourceType, ResourcePath: resourcePath}})
	if err != nil {
		return false, err
	}
	args := protocol.Args{ResourceType: resourceType, ResourcePath: in[0].ResourcePath}
	args.Set(protocol.ArgResourceType | protocol.ArgResourcePath)
	var res protocol.FreezeResult
	err = c.do(ctx, op, &args, &res)
	return res.Frozen, err
}
