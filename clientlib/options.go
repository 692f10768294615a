package clientlib

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Options configure Dial. The zero value is ready to use: the default
// socket, a 5 s dial timeout, reconnecting on, backoff capped at 2 s.
type Options struct {
	// Socket is the daemon's socket path; "" resolves it as DefaultSocket.
	Socket string
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
}

const (
	defaultDialTimeout = 5 * time.Second
	defaultMaxBackoff  = 2 * time.Second
	minBackoff         = 5 * time.Millisecond
)

// DefaultSocket returns the socket path clients use when none is given, in
// the order of protocol/README.md: $KLOCK_SOCKET; /run/klock/klockd.sock when
// running as root; $XDG_RUNTIME_DIR/klock/klockd.sock; else
// /tmp/klock-$UID/klockd.sock.
func DefaultSocket() string {
	if s := os.Getenv("KLOCK_SOCKET"); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return "/run/klock/klockd.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "klock", "klockd.sock")
	}
	return fmt.Sprintf("/tmp/klock-%d/klockd.sock", os.Getuid())
}

func (o Options) withDefaults() Options {
	if o.Socket == "" {
		o.Socket = DefaultSocket()
	}
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
