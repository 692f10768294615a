package server

import (
	"encoding/base64"
	"encoding/binary"
	"strings"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// A list cursor (the next of a list answer, the after of the request for
// the next page) names a place in the list's order. Clients treat it as an
// opaque string; it is a kind prefix and the position in base64url:
//
//	"L1" + base64url(uvarint(fence) + resource key)    list_leases
//	"A1" + base64url(varint(priority) + agent id)      list_agents
//
// Any position is harmless to ask for (it only says where to start), so a
// cursor is not signed; one that does not parse, or is of the other list,
// is INVALID_ARGUMENT.

const (
	leaseCursorPrefix = "L1"
	agentCursorPrefix = "A1"
	// maxCursorLen bounds after: the longest lease cursor (a 4128-byte
	// resource key and a fence) in base64 is under 5,600 bytes.
	maxCursorLen = 8192
)

var cursorEncoding = base64.RawURLEncoding

func leaseCursor(p engine.LeasePos) string {
	b := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(p.Resource)), p.Fence)
	return leaseCursorPrefix + cursorEncoding.EncodeToString(append(b, p.Resource...))
}

func agentCursor(p engine.AgentPos) string {
	b := binary.AppendVarint(make([]byte, 0, binary.MaxVarintLen64+len(p.ID)), p.Priority)
	return agentCursorPrefix + cursorEncoding.EncodeToString(append(b, p.ID...))
}

// cursorBody checks a cursor's length and prefix and returns its position
// bytes.
func cursorBody(s, prefix, op string) ([]byte, error) {
	if len(s) > maxCursorLen || !strings.HasPrefix(s, prefix) {
		return nil, badCursor(op)
	}
	b, err := cursorEncoding.DecodeString(s[len(prefix):])
	if err != nil {
		return nil, badCursor(op)
	}
	return b, nil
}

func parseLeaseCursor(s string) (engine.LeasePos, error) {
	b, err := cursorBody(s, leaseCursorPrefix, protocol.OpListLeases)
	if err != nil {
		return engine.LeasePos{}, err
	}
	fence, n := binary.Uvarint(b)
	if n <= 0 {
		return engine.LeasePos{}, badCursor(protocol.OpListLeases)
	}
	return engine.LeasePos{Resource: string(b[n:]), Fence: fence}, nil
}

func parseAgentCursor(s string) (engine.AgentPos, error) {
	b, err := cursorBody(s, agentCursorPrefix, protocol.OpListAgents)
	if err != nil {
		return engine.AgentPos{}, err
	}
	prio, n := binary.Varint(b)
	if n <= 0 {
		return engine.AgentPos{}, badCursor(protocol.OpListAgents)
	}
	return engine.AgentPos{Priority: prio, ID: string(b[n:])}, nil
}

func badCursor(op string) error {
	return &protocol.Error{Code: protocol.CodeInvalidArgument, Message: "klock: argument after is not a cursor of " + op +
		"; pass the next of the previous " + op + " answer unchanged, or leave after out to start from the beginning"}
}
