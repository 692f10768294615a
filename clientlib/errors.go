package clientlib

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/klockd/klock/protocol"
)

// Error is an error answered by klockd: the request reached the daemon and was
// refused. Code is one of the protocol codes; Message is the daemon's
// sentence. Transport failures are never an *Error (see ErrClosed).
//
// errors.Is(err, ErrNotFound) and the like compare codes only.
type Error struct {
	Code    protocol.Code
	Message string
}

// Error returns "klock: CODE: message".
func (e *Error) Error() string {
	msg := strings.TrimPrefix(e.Message, "klock: ")
	if msg == "" {
		return "klock: " + string(e.Code)
	}
	return "klock: " + string(e.Code) + ": " + msg
}

// Is reports whether target is an *Error with the same code, so that the
// sentinels below match any message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels, one per protocol error code, for errors.Is.
var (
	ErrBadFrame          = &Error{Code: protocol.CodeBadFrame}
	ErrBadRequest        = &Error{Code: protocol.CodeBadRequest}
	ErrUnknownOp         = &Error{Code: protocol.CodeUnknownOp}
	ErrInvalidArgument   = &Error{Code: protocol.CodeInvalidArgument}
	ErrUnknownAgent      = &Error{Code: protocol.CodeUnknownAgent}
	ErrPriorityConflict  = &Error{Code: protocol.CodePriorityConflict}
	ErrNotFound          = &Error{Code: protocol.CodeNotFound}
	ErrPermissionDenied  = &Error{Code: protocol.CodePermissionDenied}
	ErrResourceExhausted = &Error{Code: protocol.CodeResourceExhausted}
	ErrShuttingDown      = &Error{Code: protocol.CodeShuttingDown}
	ErrInternal          = &Error{Code: protocol.CodeInternal}
	// ErrUnavailable: the daemon cannot make state changes durable right
	// now (its disk is full, failing or read-only) and changed nothing.
	// Calls retry it with backoff (Options.UnavailableWait) before
	// returning it.
	ErrUnavailable = &Error{Code: protocol.CodeUnavailable}
	// ErrBindUnavailable: klockd cannot bind a lease to this process (its
	// message says why); acquire with BindNone and a TTL instead.
	ErrBindUnavailable = &Error{Code: protocol.CodeBindUnavailable}
)

// ErrClosed is returned by calls on a closed Client, and by calls whose
// connection broke when reconnecting is off. Every flavour of closed
// connection (EOF, EPIPE, ECONNRESET, use of a closed network connection)
// becomes this one error.
var ErrClosed = errors.New("klock: connection closed")

// ErrDaemonUnreachable is matched (errors.Is) by the error of Dial when no
// klockd answers on the socket, including when connecting is not permitted.
var ErrDaemonUnreachable = errors.New("klock: daemon unreachable")

// ErrLeaseReleased is Lease.Err after Lease.Release.
var ErrLeaseReleased = errors.New("klock: lease released")

// DialError is the error of Dial (and of redialling): it names the socket
// tried and says how to start a daemon. It matches ErrDaemonUnreachable and
// the underlying cause with errors.Is.
type DialError struct {
	Socket string
	Err    error // the cause from connect(2), e.g. ENOENT, ECONNREFUSED, EACCES
	// Detail, when set, says what was tried and what to do instead of the
	// default advice (no daemon found, autostart off or failed).
	Detail string
}

// Error describes what failed and what to do about it.
func (e *DialError) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("klock: cannot reach klockd at %s: %s", e.Socket, e.Detail)
	}
	if errors.Is(e.Err, os.ErrPermission) {
		return fmt.Sprintf("klock: permission denied connecting to klockd at %s: "+
			"the socket is mode 0660; join its group or run klockd as your own user "+
			"(set KLOCK_SOCKET or --socket to its socket)", e.Socket)
	}
	return fmt.Sprintf("klock: daemon unreachable at %s: %v; start it with `klockd` "+
		"(or `go run ./cmd/klockd` from the source tree), or point KLOCK_SOCKET at its socket",
		e.Socket, causeText(e.Err))
}

// Unwrap returns ErrDaemonUnreachable and the cause.
func (e *DialError) Unwrap() []error { return []error{ErrDaemonUnreachable, e.Err} }

// causeText shortens a *net.OpError ("dial unix /x: connect: no such file")
// to its system error, since the socket is already named.
func causeText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// DenialError is returned by Acquire when the daemon denies a lease for a
// reason that waiting cannot change (SESSION_EXPIRED), or when the context
// ends while the lease is still denied; in the latter case it also matches
// the context's error with errors.Is.
type DenialError struct {
	Resource string        // the resource asked for (first intent)
	Reason   string        // the last verdict (protocol.Reason values)
	HeldBy   string        // the agent whose lease or queued request decided it
	HeldPath string        // the path that lease's holder named, when not the key's (a git worktree)
	Message  string        // the daemon's sentence
	WaitTime time.Duration // the daemon's suggested delay before asking again
	Err      error         // the context's error, or nil
}

// Error describes the denial.
func (e *DenialError) Error() string {
	s := fmt.Sprintf("klock: acquire %s denied: %s", e.Resource, e.Reason)
	switch {
	case e.HeldBy != "" && e.HeldPath != "":
		s += " (held by " + e.HeldBy + ", as " + e.HeldPath + ")"
	case e.HeldBy != "":
		s += " (held by " + e.HeldBy + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the context's error, if any.
func (e *DenialError) Unwrap() error { return e.Err }

// closedErr maps every closed-connection flavour to ErrClosed itself, and
// wraps any other transport failure (a malformed response, say) so that it
// still matches ErrClosed but keeps its cause.
func closedErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.ENOTCONN), errors.Is(err, ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}

// gaveUpError is a call's context ending while the Client could not
// reconnect: it matches both the context's error and the dial failure
// (ErrDaemonUnreachable), and says both.
type gaveUpError struct {
	ctxErr  error
	dialErr error
}

func (e *gaveUpError) Error() string {
	return e.dialErr.Error() + " (gave up redialling: " + e.ctxErr.Error() + ")"
}

func (e *gaveUpError) Unwrap() []error { return []error{e.ctxErr, e.dialErr} }

// peerClosed reports whether a write failed because the daemon closed its
// end; reading then yields what it sent before, and EOF.
func peerClosed(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}
