package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The mcp command: an MCP server on stdin and stdout, built on the official
// Go SDK (github.com/modelcontextprotocol/go-sdk, its StdioTransport and
// typed AddTool). What it serves follows the MCP specification's tools page,
// https://modelcontextprotocol.io/specification/2025-11-25/server/tools:
// every tool has an input and an output schema, results carry
// structuredContent (and the same JSON as text), and a failure the model
// can act on (bad arguments, klockd down) is a result with isError set,
// never a protocol error.
//
// One server process is one klock session (see mcpSession): its leases are
// renewed while it runs and released when it exits, whether stdin closes or
// a signal arrives. They are also bound to its process (bind "process"),
// so klockd frees them at once even when it is killed with SIGKILL.

func mcpCommand() *command {
	var agent, priority string
	return &command{
		name:     "mcp",
		synopsis: "[flags]",
		summary:  "MCP server (stdio) with klock tools for AI agents",
		help: `Serves the Model Context Protocol on stdin and stdout, for an AI agent's MCP
client (Claude Code, Cursor, ...). Register it as a stdio server running
"klockctl mcp"; "klockctl integrate claude-code" writes the .mcp.json entry.

Tools:
  klock_acquire  paths, predicate (MUTATES), ttl_seconds (600), wait_seconds (0):
                 lease every path at once, or none, and say who holds them if denied
  klock_release  paths, lease_ids, or all: true
  klock_status   this agent's leases and the daemon's counters
  klock_why      path, predicate (MUTATES): who holds it and what klock_acquire
                 would answer now (klockd's explain, a dry run)

Paths are files, absolute or relative to the server's working directory; a
TYPE:path string names another resource type (SYMBOL:auth.login).

The agent is --agent, else $KLOCK_AGENT, else <client name>-<pid> built
from the MCP client's name, registered on first use and unregistered at
exit. Without --priority klockd assigns one (agents registered earlier win).
The server is one klock session: its leases are renewed while it runs and
all released when it exits (stdin closed, SIGINT, SIGTERM or SIGHUP).
They are bound to the server's process, so klockd frees them at once even
if it is killed with SIGKILL. If klockd is not running, each tool call says so and how to start it.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&agent, "agent", "", "act as agent `ID` (default $KLOCK_AGENT, else <client name>-<pid>)")
			fs.StringVar(&priority, "priority", "", "register the agent with priority `N` (lower wins; default: assigned by klockd)")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("mcp", "mcp takes no arguments, only flags")
			}
			p, err := parsePriority("mcp", priority)
			if err != nil {
				return err
			}
			return a.serveMCP(firstSet(agent, a.getenv("KLOCK_AGENT")), p)
		},
	}
}

// mcpInstructions tell the model, once, what the server is for.
const mcpInstructions = `klock coordinates AI agents that work on the same files on this machine.
Before you edit a file another agent might also edit, call klock_acquire with its path;
edit it only if "granted" is true. When you are done with the files, call klock_release.
If you are denied, the result's "message" says who holds the file and what to do.`

// serveMCP runs the MCP server on stdin/stdout until the client closes
// stdin or a signal arrives, then ends the klock session.
func (a *app) serveMCP(agent string, priority *int64) error {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	s := &mcpSession{
		a: a, socket: a.socketPath(), cwd: a.cwd(),
		agentName: agent, priority: priority,
		session: "mcp-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:]),
	}
	server := mcp.NewServer(&mcp.Implementation{Name: "klock", Title: "klock leases", Version: version()},
		&mcp.ServerOptions{Instructions: mcpInstructions})
	s.addTools(server)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err := server.Run(ctx, &mcp.StdioTransport{})
	s.close()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, mcp.ErrConnectionClosed) {
		return fmt.Errorf("mcp: %v", err)
	}
	return nil
}
