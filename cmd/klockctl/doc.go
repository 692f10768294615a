// Command klockctl inspects and drives klockd, the klock lease daemon, from
// a shell: what is locked and by whom, taking and releasing leases by hand,
// operator actions, and "klockctl run", which holds leases while a command
// runs — flock(1) for agents and shell scripts.
//
// Usage:
//
//	klockctl [--socket PATH] [--json] COMMAND [flags] [args]
//
//	status                          daemon version, uptime and counters (exit 3 if down)
//	leases [--agent A] [--prefix P] [--limit N]
//	agents [--limit N] | agents register [--priority N] ID | agents unregister ID
//	acquire [--agent A] [--session S] [--predicate P] [--ttl D] [--wait D] [--idem K] [-q] RESOURCE...
//	release LEASE_ID
//	heartbeat [--ttl D] LEASE_ID
//	end-session AGENT SESSION
//	count | evict
//	revoke LEASE_ID | freeze RESOURCE | thaw RESOURCE   (root or the daemon's uid)
//	why [--agent A] [--session S] [--predicate P] RESOURCE   holders, queue and the verdict, explained
//	watch [--prefix P] [--agent A]   a line per lease event, until interrupted
//	top [--every D] [--once]         live view: agents, longest-held leases, queues, rates (q quits)
//	run [--agent A] [--session S] [--predicate P] [--ttl D] [--wait D] [--kill-after D] RESOURCE... -- COMMAND [ARGS...]
//	resolve [RESOURCE...]           keys of resources and where klockd is looked for (no daemon needed)
//	version
//	mcp [--agent A] [--priority N]       (MCP server on stdin/stdout: klock_acquire, klock_release, klock_status, klock_why)
//	hook claude-code [--fail-closed] [--ttl D]    (Claude Code's PreToolUse and SessionEnd hook; JSON on stdin)
//	guard [--agent A] [--warn]           (git pre-commit: refuse to commit files other agents hold)
//	integrate claude-code|git [--dir D] [--dry-run]
//
// Every command documents its flags with --help. Flags may follow the
// arguments; "--" ends them. --json prints the protocol's result map (see
// protocol/README.md) with the same keys; times are Unix milliseconds.
//
// The socket is --socket, else $KLOCK_SOCKET (that socket only), else the
// user's own klockd (/run/user/$UID/klock/klockd.sock, then
// /tmp/klock-$UID/klockd.sock), else the system daemon
// (/run/klock/klockd.sock) when it may be connected to, else a per-user
// klockd that klockctl starts (found on PATH or beside klockctl; one line
// on stderr says so; KLOCK_NO_AUTOSTART=1 or KLOCK_DISABLE_AUTOSTART=1 turn
// it off). See protocol/README.md "Transport". "klockctl status" says which
// socket it talks to and whether that is the system or a per-user daemon.
//
// A RESOURCE is TYPE:path with TYPE one of FILE, SYMBOL, API_ENDPOINT,
// DATABASE_TABLE, CONFIG_KEY (any case); a bare path is a FILE. Other types
// are sent as written. A FILE path goes through the rule every klock client
// follows (protocol/README.md "FILE paths"): made absolute against the
// current directory and cleaned (a trailing / is kept: a subtree), and
// inside a linked git worktree mapped to the same path in the main
// worktree, so that shells in different directories and worktrees lock the
// same key (KLOCK_WORKTREES=separate turns the mapping off). Write ./name:x
// for a relative file whose name has a colon. A RESOURCE ending in '/' is a
// subtree that covers every key under it ("acquire src/" takes the folder;
// "src" without the slash is one plain key).
//
// Exit codes: 0 success; 1 denied, or any error; 2 usage error; 3 klockd
// unreachable (the message names the socket tried and how to start klockd).
// A change klockd cannot make durable (UNAVAILABLE) is retried for 5 s by a
// one-shot command, then reported (exit 1).
// Errors are one line on stderr. "klockctl run" exits with its command's
// code once the command has started (see run.go).
package main
