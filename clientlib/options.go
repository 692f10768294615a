package clientlib

import (
	"io"
	"os"
	"time"
)

// Options configure Dial. The zero value is ready to use: the default
// socket (started on first use), a 5 s dial timeout, reconnecting on,
// backoff capped at 2 s.
type Options struct {
	// Socket is the daemon's socket path. "" means $KLOCK_SOCKET, else the
	// order of protocol/README.md "Transport": the user's own klockd
	// (protocol.UserSockets), else the system daemon
	// (protocol.SystemSocket) when it exists and may be connected to, else
	// a per-user klockd this Dial starts (see NoAutostart). A named socket
	// (here or in $KLOCK_SOCKET) is the only one tried, and never started.
	Socket string
	// NoAutostart keeps Dial from starting klockd when none answers, as
	// $KLOCK_NO_AUTOSTART=1 or $KLOCK_DISABLE_AUTOSTART=1 do.
	NoAutostart bool
	// Stderr receives the one line Dial prints when it starts klockd;
	// nil means os.Stderr.
	Stderr io.Writer
	// ClientName, when set, is announced with hello on every connection
	// (the daemon may log it).
	ClientName string
	// DialTimeout bounds one connection attempt; 0 means 5 s.
	DialTimeout time.Duration
	// NoReconnect turns transparent reconnection off: when the connection
	// breaks, calls in flight and later calls fail with ErrClosed.
	NoReconnect bool
	// MaxBackoff caps the delay between redial attempts; 0 means 2 s.
	MaxBackoff time.Duration
	// UnavailableWait bounds how long a call (Acquire too) retries a request
	// answered UNAVAILABLE (the daemon cannot make changes durable right now
	// and changed nothing), with the backoff of protocol/README.md "Retries"
	// (10 ms doubling to 1 s, plus up to half), before it returns that error
	// (errors.Is(err, ErrUnavailable)). The call's context bounds it too. 0
	// means as long as the context allows; negative means no retry.
	UnavailableWait time.Duration
}

const (
	defaultDialTimeout = 5 * time.Second
	defaultMaxBackoff  = 2 * time.Second
	minBackoff         = 5 * time.Millisecond
)

func (o Options) withDefaults() Options {
	if o.DialTimeout <= 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = defaultMaxBackoff
	}
	if o.MaxBackoff < minBackoff {
		o.MaxBackoff = minBackoff
	}
	return o
}

func (o Options) stderr() io.Writer {
	if o.Stderr == nil {
		return os.Stderr
	}
	return o.Stderr
}
