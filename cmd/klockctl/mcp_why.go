package main

import (
	"context"
	"fmt"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/klockd/klock/clientlib"
)

type whyArgs struct {
	Path string `json:"path"`
}

type whyHolder struct {
	Agent     string `json:"agent"`
	Session   string `json:"session"`
	Predicate string `json:"predicate"`
	Since     string `json:"since"`
	Until     string `json:"until"`
}

type whyResult struct {
	Resource string      `json:"resource"`
	Holders  []whyHolder `json:"holders"`
	Message  string      `json:"message"`
}

// addWhy registers klock_why.
func (s *mcpSession) addWhy(server *mcp.Server) {
	mcp.AddTool(server, &mcp.Tool{
		Name: "klock_why", Description: whyDesc,
		InputSchema: objectSchema(map[string]*jsonschema.Schema{
			"path": {Type: "string", MinLength: ptr(1), Description: "one file path (or TYPE:path)"},
		}, "path"),
	}, guarded(s.why))
}

func (s *mcpSession) why(ctx context.Context, req *mcp.CallToolRequest, in whyArgs) (*mcp.CallToolResult, whyResult, error) {
	out := whyResult{Holders: []whyHolder{}}
	r, err := s.keyOf(in.Path)
	if err != nil {
		return nil, out, fmt.Errorf("klock_why: path: %v", err)
	}
	out.Resource = r.Key()
	ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
	defer cancel()
	err = s.withAgent(ctx, clientName(req), func(c *clientlib.Client, agent string) error {
		hs, err := holdersOf(ctx, c, r.Key())
		if err != nil {
			return err
		}
		for _, h := range hs {
			out.Holders = append(out.Holders, whyHolder{Agent: h.AgentID, Session: h.SessionID, Predicate: h.Predicate,
				Since: time.UnixMilli(h.AcquiredAt).Format(time.RFC3339), Until: time.UnixMilli(h.ExpiresAt).Format(time.RFC3339)})
		}
		others := othersOnlyOrSession(hs, agent, s.session)
		if len(others) == 0 {
			out.Message = fmt.Sprintf("%s: no other agent holds it; klock_acquire would grant it now.", r.Key())
			return nil
		}
		out.Message = fmt.Sprintf("%s: %s.", r.Key(), describeHolders(others, "", time.Now()))
		return nil
	})
	if err != nil {
		return nil, out, toolError("klock_why", err)
	}
	return nil, out, nil
}
