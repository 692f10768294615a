package server

import "time"

// Clock is where the server's time comes from. The engine's time (Unix
// ms, in every answer and record) is Wall when the server starts plus the
// Mono time elapsed since, so that a step of the wall clock (NTP, date -s,
// a VM restored from a snapshot) neither expires nor extends leases: only
// time that actually passes does.
type Clock interface {
	// Wall returns the wall-clock time, read once at start.
	Wall() time.Time
	// Mono returns the time elapsed since an arbitrary origin on a
	// monotonic clock, which never steps.
	Mono() time.Duration
}

// SystemClock returns the machine's clock: time.Now for Wall, and Go's
// monotonic clock for Mono (CLOCK_MONOTONIC on Linux, which does not count
// time spent suspended: leases do not age while the machine sleeps, nor do
// the timers of the agents on it).
func SystemClock() Clock { return systemClock{origin: time.Now()} }

type systemClock struct{ origin time.Time }

func (c systemClock) Wall() time.Time     { return time.Now() }
func (c systemClock) Mono() time.Duration { return time.Since(c.origin) }

// nowMS is the engine's clock: Unix milliseconds, the wall clock at start
// plus the monotonic time elapsed since.
func (s *Server) nowMS() int64 {
	return (s.startNS + int64(s.clock.Mono()-s.startMono)) / int64(time.Millisecond)
}

// uptime returns how long the server has run, in ms.
func (s *Server) uptime() int64 {
	return int64((s.clock.Mono() - s.startMono) / time.Millisecond)
}
