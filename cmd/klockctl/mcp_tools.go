package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// This file defines the MCP tools: their argument and result shapes, the
// descriptions a model reads, and their handlers. The SDK validates the
// arguments against each input schema (naming the property that is wrong)
// and applies its defaults before a handler runs; the handlers check what a
// schema cannot say.

// mcpLease is a lease as the tools report it.
type mcpLease struct {
	LeaseID   string `json:"lease_id"`
	Resource  string `json:"resource"`
	Predicate string `json:"predicate"`
	Fence     uint64 `json:"fence"`
	ExpiresAt string `json:"expires_at" jsonschema:"RFC 3339; renewed while the MCP server runs; empty for a lease with no ttl, which ends with its holder's process"`
}

// mcpTime is a daemon time (Unix ms) in layout, or "" for 0: a lease bound
// to its process without a ttl has no expiry (protocol/README.md "Leases
// bound to a process").
func mcpTime(ms int64, layout string) string {
	if ms == 0 {
		return ""
	}
	return time.UnixMilli(ms).Format(layout)
}

func leaseOf(g grantJSON) mcpLease {
	return mcpLease{LeaseID: g.LeaseID, Resource: g.Resource, Predicate: g.Predicate, Fence: g.Fence,
		ExpiresAt: mcpTime(g.ExpiresAt, time.RFC3339Nano)}
}

func sortLeases(ls []mcpLease) {
	slices.SortFunc(ls, func(a, b mcpLease) int {
		if c := strings.Compare(a.Resource, b.Resource); c != 0 {
			return c
		}
		return int(a.Fence) - int(b.Fence)
	})
}

type acquireArgs struct {
	Paths       []string `json:"paths"`
	Predicate   string   `json:"predicate"`
	TTLSeconds  float64  `json:"ttl_seconds"`
	WaitSeconds float64  `json:"wait_seconds"`
}

type acquireResult struct {
	Granted    bool       `json:"granted"`
	Leases     []mcpLease `json:"leases"`
	Reason     string     `json:"reason" jsonschema:"on denial: DIE, WAIT, CONFLICT, RESOURCE_LOCKED or SESSION_EXPIRED"`
	HeldBy     string     `json:"held_by" jsonschema:"on denial: the agent whose lease decided it"`
	WaitTimeMs int64      `json:"wait_time_ms" jsonschema:"on denial: suggested delay before asking again"`
	Message    string     `json:"message" jsonschema:"what happened and what to do next"`
}

type releaseArgs struct {
	Paths    []string `json:"paths,omitempty"`
	LeaseIDs []string `json:"lease_ids,omitempty"`
	All      bool     `json:"all,omitempty"`
}

type releaseResult struct {
	Released []mcpLease `json:"released"`
	NotHeld  []string   `json:"not_held" jsonschema:"paths or lease ids this agent did not hold"`
	Message  string     `json:"message"`
}

type statusArgs struct{}

type statusResult struct {
	Agent   string       `json:"agent"`
	Session string       `json:"session"`
	Socket  string       `json:"socket"`
	Leases  []mcpLease   `json:"leases"`
	Lost    []mcpLease   `json:"lost" jsonschema:"leases whose renewal failed: another agent may hold them now"`
	Daemon  mcpDaemonRes `json:"daemon"`
	Message string       `json:"message"`
}

type mcpDaemonRes struct {
	Version  string `json:"version"`
	UptimeMs int64  `json:"uptime_ms"`
	Agents   int    `json:"agents"`
	Leases   int    `json:"leases"`
	Waiters  int    `json:"waiters"`
	Grants   uint64 `json:"grants"`
	Waits    uint64 `json:"waits"`
	Dies     uint64 `json:"dies"`
}

// Tool descriptions: when a model should call each tool.
const (
	acquireDesc = `Reserve files before you edit them, so that other AI agents on this machine do not overwrite your work (and you do not overwrite theirs). Call it before editing any file another agent might also touch, with every file you are about to change: all are reserved at once, or none. Edit only when "granted" is true. If denied, "message" says who holds the file and what to do: on DIE work on something else or call again after wait_time_ms; on WAIT call again with wait_seconds to wait for it. Reservations are renewed while you work; release them with klock_release when you are done.`
	releaseDesc = `Release files you reserved with klock_acquire, as soon as you have finished editing them, so other agents can work on them. Give the paths, the lease_ids, or all: true.`
	statusDesc  = `Show which files you hold (and any reservation you lost), and the klock daemon's counters.`
	whyDesc     = `Explain who holds a file and what klock_acquire would answer you for it now, without reserving anything.`
)

var predicateEnum = []any{"MUTATES", "DELETES", "RENAMES", "PROVIDES", "CONSUMES", "DEPENDS_ON"}

func ptr[T any](v T) *T { return &v }

// pathsSchema is an array of 1..64 non-empty path strings.
func pathsSchema(desc string) *jsonschema.Schema {
	return &jsonschema.Schema{Type: "array", Description: desc, MinItems: ptr(1), MaxItems: ptr(protocol.MaxIntents),
		Items: &jsonschema.Schema{Type: "string", MinLength: ptr(1)}}
}

func objectSchema(props map[string]*jsonschema.Schema, required ...string) *jsonschema.Schema {
	return &jsonschema.Schema{Type: "object", Properties: props, Required: required,
		AdditionalProperties: &jsonschema.Schema{Not: &jsonschema.Schema{}}}
}

const pathDesc = "file paths, absolute or relative to the server's working directory; TYPE:path names another resource type (SYMBOL:auth.login)"

// addTools registers the four tools on server.
func (s *mcpSession) addTools(server *mcp.Server) {
	mcp.AddTool(server, &mcp.Tool{
		Name: "klock_acquire", Description: acquireDesc,
		InputSchema: objectSchema(map[string]*jsonschema.Schema{
			"paths": pathsSchema(pathDesc),
			"predicate": {Type: "string", Enum: predicateEnum, Default: json.RawMessage(`"MUTATES"`),
				Description: "how you will use them: MUTATES to edit (the default); CONSUMES or DEPENDS_ON to read while others may read too"},
			"ttl_seconds": {Type: "number", Minimum: ptr(1.0), Default: json.RawMessage(`600`),
				Description: "how long a reservation outlives this server if it stops renewing it"},
			"wait_seconds": {Type: "number", Minimum: ptr(0.0), Maximum: ptr(600.0), Default: json.RawMessage(`0`),
				Description: "wait up to this long for the files to become free (0: answer at once)"},
		}, "paths"),
	}, guarded(s.acquire))
	mcp.AddTool(server, &mcp.Tool{
		Name: "klock_release", Description: releaseDesc,
		InputSchema: objectSchema(map[string]*jsonschema.Schema{
			"paths":     pathsSchema("paths you reserved, as you gave them to klock_acquire"),
			"lease_ids": {Type: "array", Items: &jsonschema.Schema{Type: "string", MinLength: ptr(1)}, MinItems: ptr(1), Description: "lease ids from klock_acquire"},
			"all":       {Type: "boolean", Description: "true: release everything you hold"},
		}),
	}, guarded(s.release))
	mcp.AddTool(server, &mcp.Tool{
		Name: "klock_status", Description: statusDesc, InputSchema: objectSchema(map[string]*jsonschema.Schema{}),
	}, guarded(s.status))
	s.addWhy(server)
}

// guarded turns a panic in a handler into a tool error, so that one bad
// call never takes the server (and the session's leases) down.
func guarded[In, Out any](h mcp.ToolHandlerFor[In, Out]) mcp.ToolHandlerFor[In, Out] {
	return func(ctx context.Context, req *mcp.CallToolRequest, in In) (res *mcp.CallToolResult, out Out, err error) {
		defer func() {
			if p := recover(); p != nil {
				res, err = nil, fmt.Errorf("internal error in klockctl mcp (please report it): %v\n%s", p, debug.Stack())
			}
		}()
		return h(ctx, req, in)
	}
}

// clientName is the MCP client's name from its initialize request.
func clientName(req *mcp.CallToolRequest) string {
	if info := req.ClientInfo(); info != nil {
		return info.Name
	}
	return ""
}

// toolError words a failed request for the model: klockd down says how to
// start it; a refusal names the code.
func toolError(tool string, err error) error {
	switch {
	case errors.Is(err, clientlib.ErrDaemonUnreachable):
		why := strings.TrimPrefix(err.Error(), "klock: ")
		var de *clientlib.DialError
		if errors.As(err, &de) {
			why = fmt.Sprintf("nothing answers at %s (%s)", de.Socket, causeText(de.Err))
		}
		return fmt.Errorf("%s: klockd is not running, so nothing was done: %s. "+
			"Ask the user to start it (run `klockd`, or `systemctl --user start klockd`), then call %s again",
			tool, why, tool)
	case isCode(err, protocol.CodeUnavailable):
		return fmt.Errorf("%s: klockd cannot save changes right now, so nothing was done (%s); "+
			"it heals on its own when its disk does: try again in a little while, and tell the user if it persists",
			tool, strings.TrimPrefix(err.Error(), "klock: "))
	case isCode(err, protocol.CodeResourceExhausted):
		// Retried for a wait_seconds (protocol/README.md "Retries"); what
		// is left is a limit that others' releases did not free in time.
		return fmt.Errorf("%s: klockd is at one of its limits, so nothing was done (%s); "+
			"release files you are done with (klock_release), or wait for others to, and call %s again; "+
			"tell the user if it persists",
			tool, strings.TrimPrefix(codeMessage(err), "klock: "), tool)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: klockd did not answer in time (%s); try again, and if it persists ask the user to check klockd", tool, err)
	}
	return fmt.Errorf("%s: klockd refused the request: %s", tool, strings.TrimPrefix(err.Error(), "klock: "))
}

// codeMessage is the daemon's sentence in err, a refusal from klockd.
func codeMessage(err error) string {
	var e *clientlib.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

// isCode reports whether err is klockd's refusal with code.
func isCode(err error, code protocol.Code) bool {
	var e *clientlib.Error
	return errors.As(err, &e) && e.Code == code
}

func (s *mcpSession) acquire(ctx context.Context, req *mcp.CallToolRequest, in acquireArgs) (*mcp.CallToolResult, acquireResult, error) {
	var out acquireResult
	intents, err := s.mcpIntents(in.Paths, in.Predicate)
	if err != nil {
		return nil, out, fmt.Errorf("klock_acquire: %v", err)
	}
	ttl := time.Duration(in.TTLSeconds * float64(time.Second))
	wait := time.Duration(in.WaitSeconds * float64(time.Second))
	ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout+wait)
	defer cancel()
	var grants []grantJSON
	var denial *denialJSON
	err = s.withAgent(ctx, clientName(req), func(c *clientlib.Client, agent string) error {
		// wait_seconds 0 asks once; more is a blocking acquire for that
		// long: both as the retry table of protocol/README.md "Retries" says.
		wctx, cancelWait := waitContext(ctx, 0, wait)
		defer cancelWait()
		leases, err := c.AcquireGrants(wctx, clientlib.AcquireRequest{
			AgentID: agent, SessionID: s.session, Intents: intents, TTL: ttl, NoWait: wait == 0,
			Bind: clientlib.BindProcess}) // kill -9 of this server frees them at once
		var de *clientlib.DenialError
		if errors.As(err, &de) {
			d := denialOf(de)
			denial = &d
			out = s.denied(ctx, c, agent, intents, denial)
			return nil
		}
		for i := range leases {
			grants = append(grants, toGrantJSON(&leases[i]))
		}
		return err
	})
	if err != nil {
		return nil, out, toolError("klock_acquire", err)
	}
	if denial != nil {
		return nil, out, nil
	}
	out.Granted = true
	out.Leases = s.keep(grants, ttl)
	var names []string
	for _, l := range out.Leases {
		names = append(names, l.Resource)
	}
	out.Message = fmt.Sprintf("Granted: you hold %s (%s) until %s, renewed automatically while this MCP server runs. "+
		"Edit them now; call klock_release with the same paths when you are done.",
		strings.Join(names, ", "), in.Predicate, clock(expiresAt(out.Leases[0])))
	return nil, out, nil
}

// denied words a denial: who holds which of the paths, and what to do.
func (s *mcpSession) denied(ctx context.Context, c *clientlib.Client, agent string, intents []clientlib.Intent, d *denialJSON) acquireResult {
	out := acquireResult{Leases: []mcpLease{}, Reason: d.Reason, HeldBy: d.HeldBy, WaitTimeMs: d.WaitTime}
	now := time.Now()
	var who []string
	for _, in := range intents {
		key := in.ResourceType + ":" + in.ResourcePath
		hs, err := holdersOf(ctx, c, key)
		if err != nil {
			break
		}
		if hs = othersOnlyOrSession(hs, agent, s.session); len(hs) > 0 {
			who = append(who, key+": "+describeHolders(hs, d.HeldBy, now))
		}
	}
	held := strings.Join(who, ". ")
	if held == "" {
		held = describeHolders(nil, d.HeldBy, now)
	}
	out.Message = fmt.Sprintf("Denied (%s): %s. %s", d.Reason, held, denialAdvice(protocol.Reason(d.Reason), d.WaitTime, d.Message))
	return out
}

// denialAdvice tells the model what to do about a denial.
func denialAdvice(reason protocol.Reason, waitMs int64, message string) string {
	switch reason {
	case protocol.ReasonDie:
		return fmt.Sprintf("That agent is older than you, so klock says do not wait for it: "+
			"work on something else, and call klock_acquire again later (not before %s).",
			roundDuration(time.Duration(max(waitMs, 1))*time.Millisecond))
	case protocol.ReasonWait:
		return "You are older than that holder, so you may wait for it: " +
			"call klock_acquire again with wait_seconds (for example 60) to wait until it is free."
	case protocol.ReasonConflict:
		return "That is your own agent in another session; finish there first, or ask the user."
	case protocol.ReasonResourceLocked:
		return fmt.Sprintf("An operator froze it (%s): do not edit it; ask the user.", oneLine(message))
	case protocol.ReasonSessionExpired:
		return fmt.Sprintf("This MCP server's klock session was ended (%s): "+
			"restart the klock MCP server to reserve files again.", oneLine(message))
	}
	return oneLine(message)
}

// othersOnlyOrSession keeps the leases not held by this agent in this
// session: another session of the same agent is a holder too (CONFLICT).
func othersOnlyOrSession(ls []protocol.LeaseInfo, agent, session string) []protocol.LeaseInfo {
	var out []protocol.LeaseInfo
	for _, l := range ls {
		if l.AgentID != agent || l.SessionID != session {
			out = append(out, l)
		}
	}
	return out
}

func (s *mcpSession) release(ctx context.Context, req *mcp.CallToolRequest, in releaseArgs) (*mcp.CallToolResult, releaseResult, error) {
	out := releaseResult{Released: []mcpLease{}, NotHeld: []string{}}
	given := 0
	for _, set := range []bool{len(in.Paths) > 0, len(in.LeaseIDs) > 0, in.All} {
		if set {
			given++
		}
	}
	if given != 1 {
		return nil, out, errors.New("klock_release: give exactly one of paths (array), lease_ids (array) or all: true")
	}
	held, _ := s.heldLeases()
	var drop []mcpLease
	switch {
	case in.All:
		drop = held
	case len(in.LeaseIDs) > 0:
		for _, id := range in.LeaseIDs {
			i := slices.IndexFunc(held, func(l mcpLease) bool { return l.LeaseID == id })
			if i < 0 {
				out.NotHeld = append(out.NotHeld, id)
				continue
			}
			drop = append(drop, held[i])
		}
	default:
		for _, p := range in.Paths {
			r, err := s.keyOf(p)
			if err != nil {
				return nil, out, fmt.Errorf("klock_release: paths: %s", strings.TrimPrefix(err.Error(), "klock: "))
			}
			n := len(drop)
			for _, l := range held {
				if l.Resource == r.Key() {
					drop = append(drop, l)
				}
			}
			if len(drop) == n {
				out.NotHeld = append(out.NotHeld, p)
			}
		}
	}
	if len(drop) > 0 {
		ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
		defer cancel()
		c, err := s.client(ctx)
		if err != nil {
			return nil, out, toolError("klock_release", err)
		}
		var ids []string
		for _, l := range drop {
			if _, err := c.ReleaseLease(ctx, l.LeaseID); err != nil {
				s.forget(ids)
				return nil, out, toolError("klock_release", err)
			}
			ids = append(ids, l.LeaseID)
			out.Released = append(out.Released, l)
		}
		s.forget(ids)
	}
	out.Message = fmt.Sprintf("Released %d lease%s.", len(out.Released), plural(len(out.Released)))
	if len(out.NotHeld) > 0 {
		out.Message += " Not held by you: " + strings.Join(out.NotHeld, ", ") + "."
	}
	return nil, out, nil
}

func (s *mcpSession) status(ctx context.Context, req *mcp.CallToolRequest, _ statusArgs) (*mcp.CallToolResult, statusResult, error) {
	out := statusResult{Session: s.session}
	out.Leases, out.Lost = s.heldLeases()
	out.Leases, out.Lost = orEmpty(out.Leases), orEmpty(out.Lost)
	ctx, cancel := context.WithTimeout(ctx, mcpCallTimeout)
	defer cancel()
	err := s.withAgent(ctx, clientName(req), func(c *clientlib.Client, agent string) error {
		out.Agent, out.Socket = agent, c.Socket()
		h, err := c.Hello(ctx)
		if err != nil {
			return err
		}
		st, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		out.Daemon = mcpDaemonRes{Version: h.Server, UptimeMs: st.UptimeMS, Agents: st.Agents, Leases: st.Leases,
			Waiters: st.Waiters, Grants: st.Grants, Waits: st.Waits, Dies: st.Dies}
		return nil
	})
	if err != nil {
		return nil, out, toolError("klock_status", err)
	}
	out.Message = fmt.Sprintf("You are agent %s, session %s, holding %d lease%s.", out.Agent, out.Session,
		len(out.Leases), plural(len(out.Leases)))
	if len(out.Lost) > 0 {
		out.Message += fmt.Sprintf(" %d lease%s could not be renewed and may now be held by others: acquire those files again before editing them.",
			len(out.Lost), plural(len(out.Lost)))
	}
	return nil, out, nil
}

func orEmpty(ls []mcpLease) []mcpLease {
	if ls == nil {
		return []mcpLease{}
	}
	return ls
}
