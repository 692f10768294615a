package server

import (
	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/protocol"
)

// opArgs lists, for every operation, the argument keys it takes. Any other
// key in its args is an unknown key for it and is ignored, as PROTOCOL.md
// says, even when it names an argument of another op.
var opArgs = map[string][]string{
	protocol.OpHello:            {"client"},
	protocol.OpRegisterAgent:    {"agent_id", "priority"},
	protocol.OpUnregisterAgent:  {"agent_id"},
	protocol.OpAcquire:          {"agent_id", "session_id", "resource_type", "resource_path", "predicate", "ttl", "wait_timeout", "idem"},
	protocol.OpAcquireMany:      {"agent_id", "session_id", "ttl", "wait_timeout", "idem", "intents"},
	protocol.OpRelease:          {"lease_id"},
	protocol.OpHeartbeat:        {"lease_id", "ttl"},
	protocol.OpEndSession:       {"agent_id", "session_id"},
	protocol.OpActiveLeaseCount: nil,
	protocol.OpEvictExpired:     nil,
	protocol.OpListLeases:       {"agent_id", "resource_prefix", "limit"},
	protocol.OpListAgents:       {"limit"},
	protocol.OpRevoke:           {"lease_id"},
	protocol.OpFreeze:           {"resource_type", "resource_path"},
	protocol.OpThaw:             {"resource_type", "resource_path"},
	protocol.OpStats:            nil,
}

// redecodeForOp handles an INVALID_ARGUMENT from the decoder, which checks
// every argument key it knows whatever the op: an unknown op is answered
// UNKNOWN_OP, and for a known op the request is decoded again with only
// the op's own argument keys, so a bad value under a key the op does not
// take is ignored. It runs only on that error path.
func redecodeForOp(body []byte, req *protocol.Request, decodeErr *protocol.Error) *protocol.Error {
	keys, known := opArgs[req.Op]
	if !known {
		return &protocol.Error{Code: protocol.CodeUnknownOp, Message: unknownOpMessage(req.Op)}
	}
	var top map[string]msgpack.RawMessage
	if err := msgpack.Unmarshal(body, &top); err != nil {
		return decodeErr
	}
	var args map[string]msgpack.RawMessage
	if raw, ok := top["args"]; ok {
		if err := msgpack.Unmarshal(raw, &args); err != nil {
			return decodeErr
		}
	}
	kept := make(map[string]msgpack.RawMessage, len(keys))
	for _, k := range keys {
		if v, ok := args[k]; ok {
			kept[k] = v
		}
	}
	if len(kept) == len(args) {
		return decodeErr // every key is the op's own: the error stands
	}
	b, err := msgpack.Marshal(map[string]any{"id": top["id"], "op": top["op"], "args": kept})
	if err != nil {
		return decodeErr
	}
	if err := protocol.DecodeRequest(b, req); err != nil {
		pe, ok := err.(*protocol.Error)
		if !ok {
			return decodeErr
		}
		return pe
	}
	return nil
}

// unknownOpMessage is the UNKNOWN_OP message for op.
func unknownOpMessage(op string) string {
	return "klock: unknown op " + quote(op) + "; see PROTOCOL.md for the operations"
}
