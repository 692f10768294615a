package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/klockd/klock/clientlib"
)

// socketPath returns the socket named by --socket, else $KLOCK_SOCKET, else
// "": clientlib.Dial then finds the daemon (per-user, then system) or
// starts one, as protocol/README.md "Transport" says.
func (a *app) socketPath() string {
	if a.socket != "" {
		return a.socket
	}
	return a.getenv("KLOCK_SOCKET")
}

// dial connects to the daemon. One-shot commands dial without reconnecting:
// a daemon that is not there is reported at once (exit 3) rather than
// waited for, and a change it cannot make durable (UNAVAILABLE) is retried
// for oneShotUnavailableWait only. Long-running ones (run, acquire --wait) pass reconnect, so a
// daemon restart does not cost them their leases.
func (a *app) dial(ctx context.Context, reconnect bool) (*clientlib.Client, error) {
	opts := clientlib.Options{
		Socket:      a.socketPath(),
		ClientName:  "klockctl/" + version(),
		NoReconnect: !reconnect,
		NoAutostart: clientlib.AutostartDisabled(a.getenv),
		Stderr:      a.stderr,
	}
	if !reconnect {
		opts.UnavailableWait = oneShotUnavailableWait
	}
	c, err := clientlib.Dial(ctx, opts)
	if err != nil {
		return nil, unreachableError(err)
	}
	return c, nil
}

// oneShot runs call on a connection for a one-shot command: dialled
// without reconnecting, bounded by requestTimeout, and closed when call
// returns.
func (a *app) oneShot(call func(ctx context.Context, c *clientlib.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	c, err := a.dial(ctx, false)
	if err != nil {
		return err
	}
	defer c.Close()
	return call(ctx, c)
}

// unreachableError rewrites clientlib's dial error as klockctl's one line:
// the socket tried, why, and how to start klockd or point klockctl at it.
func unreachableError(err error) error {
	var de *clientlib.DialError
	if !errors.As(err, &de) {
		return err
	}
	if de.Detail != "" {
		return &dialFailure{err: de, msg: strings.TrimPrefix(de.Error(), "klock: ")}
	}
	return &dialFailure{err: de, msg: unreachableText(de.Socket, de.Err)}
}

// unreachableText says which socket was tried, why it failed and what to do.
func unreachableText(socket string, cause error) string {
	if errors.Is(cause, os.ErrPermission) {
		return fmt.Sprintf("permission denied connecting to klockd at %s: the socket is group-only (0660); "+
			"join its group, or run a klockd of your own and point --socket / KLOCK_SOCKET at it", socket)
	}
	why := "no answer"
	if cause != nil {
		why = causeText(cause)
	}
	return fmt.Sprintf("cannot reach klockd at %s (%s): start it with `klockd` (or `systemctl start klockd`), "+
		"or point --socket / KLOCK_SOCKET at its socket", socket, why)
}

// dialFailure is a dial error with klockctl's message; it still matches
// clientlib.ErrDaemonUnreachable.
type dialFailure struct {
	err error
	msg string
}

func (e *dialFailure) Error() string { return e.msg }
func (e *dialFailure) Unwrap() error { return e.err }

// isUnreachable reports whether err means no daemon answered (exit 3).
func isUnreachable(err error) bool {
	return errors.Is(err, clientlib.ErrDaemonUnreachable)
}

// causeText shortens a dial cause to the system error's text when there is
// one ("no such file or directory", "connection refused"), since the socket
// is already named.
func causeText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}
