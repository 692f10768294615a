package server

import (
	"fmt"
	"runtime/debug"

	"github.com/klockd/klock/protocol"
)

// The panic policy. A panic while a request is decoded, a read is served or
// an answer is encoded changes nothing: it is answered INTERNAL and the
// daemon serves on (handle). A panic while the engine's state is being
// changed (anywhere in commitLocked) may leave memory ahead of the log, or
// the engine half way through a change: every later record could then
// refer to state the log never had. So the server stops changing and
// reading state, answers the change INTERNAL, closes its listeners and
// Serve returns a *PanicError; the daemon shuts down and exits non-zero,
// and its supervisor restarts it from the log, which holds exactly what
// was acknowledged.

// PanicError is returned by Serve when a state change panicked: the server
// has stopped, and its engine must not be used again.
type PanicError struct {
	Op       string // the change's op
	Value    any    // what was passed to panic
	Recorded bool   // the change's records had been handed to the journal
}

// Error says what panicked and what it means.
func (e *PanicError) Error() string {
	return fmt.Sprintf("klock: panic while changing state (op %s): %v; memory may no longer match the log, so klockd stops and must be restarted from it", e.Op, e.Value)
}

// midChangeHook, when set, is called in every state change after the
// engine has changed and before its records reach the journal: the most
// dangerous point for a panic. Tests set it (testhook_*.go).
var midChangeHook func(op string)

// breakLocked handles a panic r raised by change ch: it logs the stack,
// marks the server broken, starts closing the listeners and returns the
// outcome to answer ch with. recorded says whether ch's records had reached
// the journal. Called from commitLocked's deferred recover, with s.mu held.
func (s *Server) breakLocked(ch *change, r any, recorded bool) outcome {
	s.log.Error("panic while changing state; klockd stops so that it restarts from its log",
		"op", ch.op, "recorded", recorded, "panic", r, "stack", string(debug.Stack()))
	s.stopLocked(&PanicError{Op: ch.op, Value: r, Recorded: recorded})
	msg := "klock: internal error while making this change; it was not made (the daemon logged it and restarts from its log); retry after reconnecting"
	if recorded {
		msg = "klock: internal error after this change was recorded; it was made, but its answer is lost (the daemon logged it and restarts from its log); check the state after reconnecting"
	}
	return outcome{err: &protocol.Error{Code: protocol.CodeInternal, Message: msg}}
}

// stopLocked stops the server because memory may no longer match the log
// (err says why): nothing is read or changed any more, the listeners
// close, and Serve returns err. The caller holds s.mu.
func (s *Server) stopLocked(err error) {
	s.broken.Store(&stopCause{err})
	s.beginShutdown()
}

// stopCause is why the server stopped itself.
type stopCause struct{ err error }

// errBroken answers changes and reads that arrive after a state change
// panicked, until the daemon has stopped.
var errBroken = &protocol.Error{Code: protocol.CodeShuttingDown, Message: "klock: the daemon is restarting after an internal error; nothing was changed; retry after reconnecting"}
