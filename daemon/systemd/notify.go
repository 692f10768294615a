package systemd

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notify sends state (for example "READY=1", "STOPPING=1", "WATCHDOG=1" or
// several newline-separated assignments) to the service manager's
// $NOTIFY_SOCKET, a datagram Unix socket; a name starting with '@' is an
// abstract socket. It reports whether the message was sent: false with a nil
// error when NOTIFY_SOCKET is unset, which is the case whenever the daemon is
// not run by a service manager that waits for it.
//
// NOTIFY_SOCKET is left set, since the daemon notifies more than once
// (readiness, watchdog pings, stopping).
func Notify(state string) (sent bool, err error) {
	sent, err = daemon.SdNotify(false, state)
	if err != nil {
		return false, fmt.Errorf("klock: sd_notify %q: %w", state, err)
	}
	return sent, nil
}

// WatchdogInterval returns the watchdog timeout the service manager expects
// pings within (WATCHDOG_USEC), and whether the watchdog is enabled for this
// process: WATCHDOG_USEC set to a positive number of microseconds and
// WATCHDOG_PID, when set, equal to this process's id. Malformed values mean
// disabled.
func WatchdogInterval() (time.Duration, bool) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0, false
	}
	return d, true
}

// Watchdog sends "WATCHDOG=1" once at once and then every half of
// WatchdogInterval, as sd_watchdog_enabled(3) advises, until ctx ends. It
// returns at once when the watchdog is not enabled, so the daemon may start it
// unconditionally: go systemd.Watchdog(ctx).
//
// A failed ping is not fatal: the next one is tried on schedule, and if none
// gets through the service manager restarts the daemon, which is the point.
func Watchdog(ctx context.Context) {
	interval, ok := WatchdogInterval()
	if !ok {
		return
	}
	period := interval / 2
	if period <= 0 {
		period = interval
	}
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	for {
		_, _ = Notify("WATCHDOG=1")
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
