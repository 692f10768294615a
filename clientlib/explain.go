package clientlib

import (
	"context"

	"github.com/klockd/klock/protocol"
)

// ExplainRequest names the acquire to explain. AgentID and SessionID are
// optional (a new agent, a new session); Predicate defaults to MUTATES.
type ExplainRequest struct {
	AgentID, SessionID         string
	ResourceType, ResourcePath string
	Predicate                  string
}

// Explain asks the daemon what an acquire would get now, without acquiring
// anything: the holders of the resource (every lease on an overlapping
// key, each marked with whether it conflicts), the queue, the verdict with
// the DESIGN.md step that decided it, and one sentence saying why. The
// daemon decides it with the same code as an acquire.
func (c *Client) Explain(ctx context.Context, req ExplainRequest) (*protocol.ExplainResult, error) {
	args := protocol.Args{ResourceType: req.ResourceType, ResourcePath: req.ResourcePath}
	args.Set(protocol.ArgResourceType | protocol.ArgResourcePath)
	if req.AgentID != "" {
		args.AgentID = req.AgentID
		args.Set(protocol.ArgAgentID)
	}
	if req.SessionID != "" {
		args.SessionID = req.SessionID
		args.Set(protocol.ArgSessionID)
	}
	if req.Predicate != "" {
		args.Predicate = req.Predicate
		args.Set(protocol.ArgPredicate)
	}
	var res protocol.ExplainResult
	if err := c.do(ctx, protocol.OpExplain, &args, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ListWaiters returns the requests queued in the daemon (acquires parked
// with wait_timeout), sorted by resource then queue order, at most limit
// (0 means 1000), and whether there were more.
func (c *Client) ListWaiters(ctx context.Context, limit int) ([]protocol.WaiterInfo, bool, error) {
	var res protocol.ListWaitersResult
	if err := c.do(ctx, protocol.OpListWaiters, limitArgs(limit), &res); err != nil {
		return nil, false, err
	}
	return res.Waiters, res.Truncated, nil
}
