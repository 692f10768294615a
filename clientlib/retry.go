package clientlib

import (
	"errors"
	"time"

	"github.com/klockd/klock/protocol"
)

// The retry table of protocol/README.md "Retries": what a client does with
// each error code and verdict, for a blocking acquire (Acquire), a lease's
// keep-alive, and every other call. retry_test.go reads the table from the
// README and checks these functions, and the Client's behaviour, against it.

// retryAction is one cell of the table.
type retryAction string

const (
	actDone          retryAction = "done"                      // a grant: return it
	actReturn        retryAction = "returned"                  // a denial is the call's result
	actFail          retryAction = "fail"                      // return the error (or the denial as an error)
	actLost          retryAction = "lost"                      // keep-alive: the lease is lost at once
	actAfterWaitTime retryAction = "retry after wait_time"     // sleep wait_time plus up to half of it, then again
	actWaitAgain     retryAction = "again"                     // WAIT: again at once after a daemon-side wait ran out, else after wait_time
	actBackoff       retryAction = "retry with backoff"        // 10 ms doubling to 1 s, plus up to half of it
	actUntilExpiry   retryAction = "retry until expiry"        // keep-alive: again after max(ttl/20, 5 ms) plus jitter, until the give-up time
	actResend        retryAction = "resend after reconnecting" // the Client holds the call and resends it on the new connection
	actNone          retryAction = "-"                         // cannot happen for this kind of call
)

// codeUnavailable is the code klockd answers a state change with while it
// cannot make state durable (protocol/README.md "A failing disk").
const codeUnavailable = protocol.CodeUnavailable

// verdictAction is what Acquire does with a denial's reason.
func verdictAction(r protocol.Reason) retryAction {
	switch r {
	case protocol.ReasonWait:
		return actWaitAgain
	case protocol.ReasonDie, protocol.ReasonConflict, protocol.ReasonResourceLocked:
		return actAfterWaitTime
	}
	return actFail // SESSION_EXPIRED, and any reason this client does not know
}

// acquireAction is what Acquire does with an error code.
func acquireAction(code protocol.Code) retryAction {
	switch code {
	case protocol.CodeShuttingDown:
		return actResend
	case protocol.CodeResourceExhausted, codeUnavailable:
		return actBackoff
	}
	return actFail
}

// keepAliveAction is what a lease's keep-alive does when a heartbeat gets
// an error code.
func keepAliveAction(code protocol.Code) retryAction {
	switch code {
	case protocol.CodeShuttingDown:
		return actResend
	case protocol.CodeResourceExhausted, codeUnavailable, protocol.CodeInternal:
		return actUntilExpiry
	}
	return actLost
}

// callAction is what any other call does with an error code.
func callAction(code protocol.Code) retryAction {
	switch code {
	case protocol.CodeShuttingDown:
		return actResend
	case codeUnavailable:
		return actBackoff
	}
	return actFail
}

// acquireRetries reports whether Acquire asks again after an attempt that
// ended with code. UNAVAILABLE is "retry with backoff" in every column, and
// every call (Client.do) retries it already, within Options.UnavailableWait:
// what reaches Acquire is final.
func acquireRetries(code protocol.Code) bool {
	a := acquireAction(code)
	return (a == actBackoff || a == actResend) && callAction(code) != actBackoff
}

// The table's "retry with backoff": 10 ms, doubling to at most 1 s.
const (
	backoffFirst = 10 * time.Millisecond
	backoffMax   = time.Second
)

// backoff paces one "retry with backoff": each next delay is the table's
// step plus a random 0-50 % (jitter). The zero value starts at the first.
type backoff struct{ step time.Duration }

// next returns the delay before the next attempt.
func (b *backoff) next() time.Duration {
	if b.step == 0 {
		b.step = backoffFirst
	}
	d := jitter(b.step)
	b.step = min(2*b.step, backoffMax)
	return d
}

// codeOf returns the protocol code of a remote error, or "".
func codeOf(err error) protocol.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}
