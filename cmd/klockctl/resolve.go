package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/klockd/klock/protocol"
)

// resolveJSON is the resolve command's --json output: where klockctl would
// look for the daemon, and the key of each resource named.
type resolveJSON struct {
	UserSockets  []string       `json:"user_sockets"`
	SystemSocket string         `json:"system_socket"`
	Named        string         `json:"named_socket,omitempty"` // --socket or $KLOCK_SOCKET
	Resources    []resolvedJSON `json:"resources"`
}

// resolvedJSON is one resource argument and its key.
type resolvedJSON struct {
	Arg        string `json:"arg"`
	Key        string `json:"key"`
	ClientPath string `json:"client_path,omitempty"`
}

func resolveCommand() *command {
	return &command{
		name:     "resolve",
		synopsis: "[flags] [RESOURCE...]",
		summary:  "show the key of each resource and where klockd is looked for (no daemon needed)",
		help: `Prints, without contacting klockd, what every klock client would do here:
the socket a named --socket or $KLOCK_SOCKET gives, else the per-user
sockets tried in order and the system socket (protocol/README.md
"Transport"), and for each RESOURCE the key it is leased under
(protocol/README.md "FILE paths"): a FILE path made absolute against the
current directory, cleaned, and mapped out of a linked git worktree unless
KLOCK_WORKTREES=separate; with the path as named when that mapping changed
it. Other clients' copies of these rules are tested against its --json.`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			out := resolveJSON{
				UserSockets:  protocol.UserSockets(os.Geteuid()),
				SystemSocket: protocol.SystemSocket,
				Named:        a.socketPath(),
				Resources:    []resolvedJSON{},
			}
			for _, arg := range args {
				r, err := parseResource(arg, a.cwd())
				if err != nil {
					return usagef("resolve", "%v", err)
				}
				out.Resources = append(out.Resources, resolvedJSON{Arg: arg, Key: r.Key(), ClientPath: r.ClientPath})
			}
			if a.json {
				return writeJSON(a.stdout, out)
			}
			if out.Named != "" {
				fmt.Fprintf(a.stdout, "socket     %s (named: the only one tried)\n", out.Named)
			} else {
				for i, s := range out.UserSockets {
					fmt.Fprintf(a.stdout, "socket %d   %s (per-user)\n", i+1, s)
				}
				fmt.Fprintf(a.stdout, "socket %d   %s (system, if you may connect)\n", len(out.UserSockets)+1, out.SystemSocket)
			}
			for _, r := range out.Resources {
				fmt.Fprintf(a.stdout, "%s\t%s\n", oneLine(r.Arg), resourceText(r.Key, r.ClientPath))
			}
			return nil
		},
	}
}
