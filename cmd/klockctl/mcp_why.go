package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// klock_why is the daemon's explain op (a dry run of the acquire, decided by
// the same code) for this agent and session, in words for the model.

type whyArgs struct {
	Path      string `json:"path"`
	Predicate string `json:"predicate"`
}

type whyHolder struct {
	Agent     string `json:"agent"`
	Session   string `json:"session"`
	Resource  string `json:"resource" jsonschema:"the key the lease is on: the path, or a subtree (ending in /) above it"`
	Predicate string `json:"predicate"`
	Since     string `json:"since"`
	Until     string `json:"until" jsonschema:"RFC 3339; empty for a lease with no ttl, which ends with its holder's process"`
	Conflicts bool   `json:"conflicts" jsonschema:"whether it conflicts with you taking the path with predicate"`
}

type whyWaiter struct {
	Agent     string `json:"agent"`
	Predicate string `json:"predicate"`
	Since     string `json:"since"`
}

type whyResult struct {
	Resource   string      `json:"resource"`
	Predicate  string      `json:"predicate"`
	Verdict    string      `json:"verdict" jsonschema:"GRANT, or the reason klock_acquire would be denied: DIE, WAIT, CONFLICT, RESOURCE_LOCKED, SESSION_EXPIRED"`
	HeldBy     string      `json:"held_by"`
	WaitTimeMs int64       `json:"wait_time_ms"`
	Holders    []whyHolder `json:"holders"`
	Queue      []whyWaiter `json:"queue"`
	Message    string      `json:"message"`
}

// addWhy registers klock_why.
func (s *mcpSession) addWhy(server *mcp.Server) {
	mcp.AddTool(server, &mcp.Tool{
		Name: "klock_why", Description: whyDesc,
		InputSchema: objectSchema(map[string]*jsonschema.Schema{
			"path": {Type: "string", MinLength: ptr(1), Description: "one file path (or TYPE:path)"},
			"predicate": {Type: "string", Enum: predicateEnum, Default: json.RawMessage(`"MUTATES"`),
				Description: "the predicate you would ask klock_acquire for"},
		}, "path"),
	}, guarded(s.why))
}

func (s *mcpSession) why(ctx context.Context, req *mcp.CallToolRequest, in whyArgs) (*mcp.CallToolResult, whyResult, error) {
	out := whyResult{Holders: []whyHolder{}, Queue: []whyWaiter{}}
	r, err := s.keyOf(in.Path)
	if err != nil {
		return nil, out, fmt.Errorf("klock_why: path: %s", errText(err))
	}
	ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
	defer cancel()
	var x *protocol.ExplainResult
	err = s.withAgent(ctx, clientName(req), func(c *clientlib.Client, agent string) error {
		var err error
		x, err = c.Explain(ctx, clientlib.ExplainRequest{AgentID: agent, SessionID: s.session,
			ResourceType: r.Type, ResourcePath: r.Path, Predicate: in.Predicate})
		return err
	})
	if err != nil {
		return nil, out, toolError("klock_why", err)
	}
	out.Resource, out.Predicate, out.Verdict = x.Resource, x.Predicate, x.Verdict
	out.HeldBy, out.WaitTimeMs = x.HeldBy, x.WaitTime
	var others []protocol.LeaseInfo
	for _, h := range x.Holders {
		out.Holders = append(out.Holders, whyHolder{Agent: h.AgentID, Session: h.SessionID, Resource: h.Resource,
			Predicate: h.Predicate, Conflicts: h.Conflicts,
			Since: time.UnixMilli(h.AcquiredAt).Format(time.RFC3339), Until: mcpTime(h.ExpiresAt, time.RFC3339)})
		if h.Conflicts {
			others = append(others, h.LeaseInfo)
		}
	}
	for _, w := range x.Queue {
		out.Queue = append(out.Queue, whyWaiter{Agent: w.AgentID, Predicate: w.Predicate,
			Since: time.UnixMilli(w.Since).Format(time.RFC3339)})
	}
	if x.Verdict == protocol.VerdictGrant {
		out.Message = fmt.Sprintf("%s: klock_acquire would grant it to you now (%s).", x.Resource, oneLine(x.Message))
		return nil, out, nil
	}
	out.Message = fmt.Sprintf("%s: klock_acquire would be denied (%s): %s. %s", x.Resource, x.Verdict,
		describeHolders(others, x.HeldBy, time.Now()), denialAdvice(x.Reason, x.WaitTime, x.Message))
	return nil, out, nil
}
