// Package systemd connects klockd to a service manager that speaks systemd's
// protocols: socket activation (sockets inherited through LISTEN_FDS and
// LISTEN_PID), readiness and shutdown notification (sd_notify over
// $NOTIFY_SOCKET) and the watchdog (WATCHDOG_USEC and WATCHDOG_PID).
//
// Every function is a no-op when the matching environment is absent, so the
// daemon calls them unconditionally: started by hand or by a test they do
// nothing, started by systemd (or systemd-socket-activate) they take part.
//
// The daemon uses the package like this:
//
//	lns, err := systemd.Listeners() // at start: adopt lns[0] instead of creating the socket
//	systemd.Notify("READY=1")       // once recovery is done and the socket is served
//	go systemd.Watchdog(ctx)        // pings WATCHDOG=1 at half of WatchdogSec until ctx ends
//	systemd.Notify("STOPPING=1")    // when shutdown begins
package systemd
