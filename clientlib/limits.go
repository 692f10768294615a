package clientlib

import (
	"fmt"
	"strings"

	"github.com/klockd/klock/protocol"
)

// checkArgs checks the limits of the string arguments a request carries
// before it is sent, with the daemon's own messages (protocol.CheckText),
// so that, say, a 1 MB path is reported as a path over 4096 bytes rather
// than as a frame over max_frame. Empty strings are left to the daemon:
// whether one is allowed depends on the operation.
func checkArgs(a *protocol.Args) error {
	if a == nil {
		return nil
	}
	for _, c := range []struct {
		arg   protocol.Arg
		name  string
		value string
		max   int
	}{
		{protocol.ArgAgentID, "agent_id", a.AgentID, protocol.MaxIDLen},
		{protocol.ArgSessionID, "session_id", a.SessionID, protocol.MaxIDLen},
		{protocol.ArgResourcePath, "resource_path", a.ResourcePath, protocol.MaxPathLen},
		{protocol.ArgClientPath, "client_path", a.ClientPath, protocol.MaxPathLen},
		{protocol.ArgLeaseID, "lease_id", a.LeaseID, protocol.MaxIDLen},
		{protocol.ArgIdem, "idem", a.Idem, protocol.MaxIdemLen},
		{protocol.ArgResourcePrefix, "resource_prefix", a.ResourcePrefix, protocol.MaxPrefixLen},
	} {
		if err := checkString(a.Has(c.arg), c.name, c.value, c.max); err != nil {
			return err
		}
	}
	if a.Has(protocol.ArgResourcePath) && a.ResourcePath != "" {
		if err := checkDepth("resource_path", a.ResourceType, a.ResourcePath); err != nil {
			return err
		}
	}
	if !a.Has(protocol.ArgIntents) {
		return nil
	}
	if n := len(a.Intents); n > protocol.MaxIntents {
		return &Error{Code: protocol.CodeInvalidArgument,
			Message: fmt.Sprintf("klock: intents has %d entries; allowed 1..%d", n, protocol.MaxIntents)}
	}
	for i, in := range a.Intents {
		name := fmt.Sprintf("intents[%d].resource_path", i)
		if err := checkString(true, name, in.ResourcePath, protocol.MaxPathLen); err != nil {
			return err
		}
		if err := checkDepth(name, in.ResourceType, in.ResourcePath); err != nil {
			return err
		}
		if err := checkString(true, fmt.Sprintf("intents[%d].client_path", i), in.ClientPath, protocol.MaxPathLen); err != nil {
			return err
		}
	}
	return nil
}

// checkString checks one non-empty string argument that is present.
func checkString(present bool, name, value string, max int) error {
	if !present || value == "" {
		return nil
	}
	if msg := protocol.CheckText(name, value, max); msg != "" {
		return &Error{Code: protocol.CodeInvalidArgument, Message: msg}
	}
	return nil
}

// checkDepth checks a resource_path's levels as the daemon keys it: a FILE
// path cleaned first (a relative one is left to the daemon, which refuses
// it), any other type as given.
func checkDepth(name, typ, p string) error {
	if strings.EqualFold(typ, "FILE") && strings.HasPrefix(p, "/") {
		p = protocol.CleanFilePath(p)
	}
	if msg := protocol.CheckDepth(name, p); msg != "" {
		return &Error{Code: protocol.CodeInvalidArgument, Message: msg}
	}
	return nil
}
