package main

import (
	"context"
	"errors"
	"io"
)

// Outcome is the verdict of one acquire attempt.
type Outcome int

// Outcomes of an acquire. Busy is a denial by a back end that has no Wait-Die
// (flock, redis): the resource is held, try later.
const (
	Granted Outcome = iota
	DeniedDie
	DeniedWait
	DeniedBusy
	DeniedOther
)

// Locker is one worker's handle on a back end. A Locker is used by a single
// goroutine.
type Locker interface {
	// Acquire takes an exclusive lease on resource and returns the token that
	// releases it, or a denial outcome.
	Acquire(ctx context.Context, resource string) (token string, out Outcome, err error)
	// Release gives back the lease token holds on resource.
	Release(ctx context.Context, resource, token string) error
}

// Backend is one lock service under test, started once per run.
type Backend interface {
	// Name is the back end's label in the table, JSON and plot.
	Name() string
	// Clients returns w Lockers for one cell and a closer for whatever they
	// share (a pool, one multiplexed connection).
	Clients(ctx context.Context, w int) ([]Locker, io.Closer, error)
	// Hold acquires n leases on distinct resources that stay held until
	// Close, for the many-leases workload. It returns errUnsupported when the
	// back end cannot hold that many.
	Hold(ctx context.Context, n int) error
	// RSS reports the resident memory of the back end's server process in
	// bytes; false when there is no server process.
	RSS() (int64, bool)
	// Settings describes how the peer was configured, for BENCHMARKS.md.
	Settings() string
	// Close stops the server process and frees every resource.
	Close() error
}

// errUnsupported marks a workload a back end cannot run; the cell is
// reported as skipped rather than failed.
var errUnsupported = errors.New("klock-bench: not supported by this back end")

// closers closes every element and returns the first error.
type closers []io.Closer

func (cs closers) Close() error {
	var first error
	for _, c := range cs {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
