package clientlib

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/klockd/klock/protocol"
)

// defaultWait is the longest single server-side wait Acquire asks for when
// the request sets none; Acquire waits again after it until its context ends.
const defaultWait = 30 * time.Second

// Lease is a lease (or an all-or-nothing set of leases) taken with Acquire
// and kept alive in the background until Release. If a renewal fails, Lost
// is closed and Err says why: the holder must then stop using the resource.
type Lease struct {
	c      *Client
	grants []AcquireResult
	ttl    time.Duration
	ctx    context.Context // ends on Release or Client.Close; bounds renewals
	stop   context.CancelFunc
	exited chan struct{} // closed when the keep-alive goroutine returns
	lost   chan struct{}

	mu       sync.Mutex // guards the fields that follow
	expires  time.Time  // the earliest expiry among grants, as last renewed, on this process's clock
	soon     bool       // renew at once: the grant may be older than this Acquire
	err      error
	released bool
}

// ID returns the lease id (of the first intent's lease).
func (l *Lease) ID() string { return l.grants[0].LeaseID }

// Fence returns the fencing token (of the first intent's lease).
func (l *Lease) Fence() uint64 { return l.grants[0].Fence }

// Resource returns the resource key (of the first intent's lease).
func (l *Lease) Resource() string { return l.grants[0].Resource }

// Leases returns every lease of the set, one per intent, as granted.
func (l *Lease) Leases() []AcquireResult { return append([]AcquireResult(nil), l.grants...) }

// ExpiresAt returns when the lease expires unless renewed again (the
// earliest expiry for a set), as of the last renewal. It is measured on
// this process's monotonic clock from when the request that granted or
// renewed the lease was sent, plus its ttl: a lower bound that no step of
// the wall clock moves (the daemon's expires_at is on its own lease clock).
// It is the zero time for a lease without a ttl.
func (l *Lease) ExpiresAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expires
}

// Lost returns a channel closed when the lease is lost: a renewal failed
// (it expired, was revoked, or the daemon stayed unreachable until just
// before it would expire) or the Client was closed. It is not closed by
// Release. A lease without a ttl is never renewed, so only closing the
// Client closes Lost.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Err returns nil while the lease is held; why it was lost once Lost is
// closed; ErrLeaseReleased after Release.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil && l.released {
		return ErrLeaseReleased
	}
	return l.err
}

// Release stops the keep-alive and releases every lease of the set.
// Releasing twice is harmless. Releasing a lost lease returns nil without
// asking the daemon: it has ended already (expired or revoked), or the
// Client is closed.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return nil
	}
	l.released = true
	lost := l.err != nil
	l.mu.Unlock()
	l.stop()
	<-l.exited
	if lost {
		return nil
	}
	var first error
	for _, g := range l.grants {
		if _, err := l.c.ReleaseLease(ctx, g.LeaseID); err != nil && first == nil {
			first = fmt.Errorf("klock: releasing lease %s on %s: %w", g.LeaseID, g.Resource, err)
		}
	}
	return first
}

// lose records why the lease was lost and closes Lost, once.
func (l *Lease) lose(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil || l.released {
		return
	}
	l.err = err
	close(l.lost)
}

// Acquire blocks until the daemon grants req's intents (one: acquire;
// several: acquire_many, all or nothing) or ctx ends, then keeps the lease
// alive by renewing it every TTL/3 until Release.
//
// It follows the "blocking acquire" column of the retry table in
// protocol/README.md "Retries": on WAIT the request waits in the daemon
// (wait_timeout, bounded by ctx's deadline); on DIE, CONFLICT or
// RESOURCE_LOCKED it is retried after the daemon's suggested wait_time plus
// jitter; RESOURCE_EXHAUSTED and UNAVAILABLE are retried with backoff (and
// SHUTTING_DOWN resent once reconnected). Every attempt carries the same
// idempotency key, so a grant whose answer was lost to a reconnect is
// returned, never doubled. It fails with a *DenialError for SESSION_EXPIRED,
// when ctx ends while denied (matching ctx's error with errors.Is), or at
// the first denial when req.NoWait is set; and with an *Error for a request
// the daemon refuses (when ctx ends while a refusal is being retried, with
// that *Error, matching ctx's error too).
//
// The keep-alive follows the table's "keep-alive" column: a renewal that
// gets NOT_FOUND (or any error the table marks lost) loses the lease at
// once; RESOURCE_EXHAUSTED, UNAVAILABLE and INTERNAL are retried until just
// before the lease would expire.
func (c *Client) Acquire(ctx context.Context, req AcquireRequest) (*Lease, error) {
	// A key of the caller's may return a lease granted before this call,
	// with less time left than a new one: renew it at once.
	old := req.Idem != ""
	grants, start, err := c.acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	return c.keep(grants, req.TTL, start, old), nil
}

// AcquireGrants asks for req's intents exactly as Acquire does (the
// "blocking acquire" column of the retry table; one attempt with
// req.NoWait) and returns the grants, one per intent, but does not keep
// them alive: they last their TTL unless the caller renews them
// (Heartbeat) or releases them (ReleaseLease). For a program that renews
// leases on its own schedule, or hands them to another process.
func (c *Client) AcquireGrants(ctx context.Context, req AcquireRequest) ([]AcquireResult, error) {
	grants, _, err := c.acquire(ctx, req)
	return grants, err
}

// acquire is Acquire up to the grant: it returns the grants and when the
// request that got them was sent.
func (c *Client) acquire(ctx context.Context, req AcquireRequest) ([]AcquireResult, time.Time, error) {
	if len(req.Intents) == 0 {
		return nil, time.Time{}, &Error{Code: protocol.CodeInvalidArgument, Message: "Acquire needs at least 1 intent"}
	}
	if req.Idem == "" {
		req.Idem = c.newIdem()
	}
	maxWait := req.WaitTimeout
	if maxWait <= 0 {
		maxWait = defaultWait
	}
	if req.NoWait {
		maxWait = 0
	}
	resource := req.Intents[0].ResourceType + ":" + req.Intents[0].ResourcePath
	var retry backoff
	var last *AcquireResult // the last denial
	var refused error       // the last refusal retried with backoff (RESOURCE_EXHAUSTED)
	for {
		attempt := req
		wait, worth := waitFor(ctx, maxWait)
		if req.NoWait {
			wait = 0
		}
		if !worth && (last != nil || refused != nil) {
			// Too little time is left for another answer to arrive before
			// ctx ends: report the last denial or refusal when it does.
			<-ctx.Done()
			return nil, time.Time{}, gaveUp(resource, last, refused, ctx.Err())
		}
		attempt.WaitTimeout = wait
		start := time.Now()
		grants, denial, err := c.acquireAttempt(ctx, attempt)
		if denial != nil {
			last = denial
		}
		var delay time.Duration
		switch {
		case err != nil && !req.NoWait && acquireRetries(codeOf(err)):
			refused = err
			delay = retry.next()
		case err != nil && (last != nil || refused != nil) && ctx.Err() != nil:
			// ctx ended during an attempt (its answer was slower than
			// waitFor allowed for): the caller still learns why it waited.
			return nil, time.Time{}, gaveUp(resource, last, refused, err)
		case err != nil:
			return nil, time.Time{}, err
		case grants != nil:
			return grants, start, nil
		case req.NoWait || verdictAction(protocol.Reason(denial.Reason)) == actFail:
			return nil, time.Time{}, denialError(resource, denial, nil)
		case verdictAction(protocol.Reason(denial.Reason)) == actWaitAgain && attempt.WaitTimeout > 0 && time.Since(start) >= attempt.WaitTimeout:
			delay = 0 // the daemon's wait ran out; wait again
		default:
			delay = jitter(max(denial.WaitTime, time.Millisecond))
		}
		if serr := sleep(ctx, delay); serr != nil {
			return nil, time.Time{}, gaveUp(resource, last, refused, serr)
		}
	}
}

// gaveUp is the error of a blocking acquire that ctx ended (err): the last
// denial, else the last refusal it retried, with err; err alone if neither.
func gaveUp(resource string, last *AcquireResult, refused, err error) error {
	switch {
	case last != nil:
		return denialError(resource, last, err)
	case refused != nil:
		return fmt.Errorf("%w; gave up retrying: %w", refused, err)
	}
	return err
}

// acquireAttempt sends one acquire or acquire_many.
func (c *Client) acquireAttempt(ctx context.Context, req AcquireRequest) ([]AcquireResult, *AcquireResult, error) {
	if len(req.Intents) == 1 {
		r, err := c.AcquireOnce(ctx, req)
		if err != nil || !r.Success {
			return nil, r, err
		}
		return []AcquireResult{*r}, nil, nil
	}
	r, err := c.AcquireMany(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	if !r.Success {
		return nil, &AcquireResult{Reason: r.Reason, WaitTime: r.WaitTime, HeldBy: r.HeldBy, HeldPath: r.HeldPath, Message: r.Message}, nil
	}
	return r.Leases, nil, nil
}

func denialError(resource string, d *AcquireResult, err error) error {
	return &DenialError{Resource: resource, Reason: d.Reason, HeldBy: d.HeldBy, HeldPath: d.HeldPath, Message: d.Message,
		WaitTime: d.WaitTime, Err: err}
}

// waitFor picks the server-side wait for one attempt: maxWait, shortened so
// that the daemon answers a little before ctx's deadline (then the denial,
// not a bare deadline error, is what Acquire reports). worth is false when
// so little time is left that an answer might not arrive before the
// deadline; the wait is then 0 (answer at once).
func waitFor(ctx context.Context, maxWait time.Duration) (wait time.Duration, worth bool) {
	dl, ok := ctx.Deadline()
	if !ok {
		return maxWait, true
	}
	rem := time.Until(dl)
	margin := deadlineMargin(rem)
	w := rem - margin
	if w < margin {
		return 0, false
	}
	return min(w, maxWait), true
}

// deadlineMargin is the time a client keeps free before a deadline rem
// away, for an answer to arrive and be read on a busy machine: a tenth of
// rem, at least 20 ms and at most 250 ms.
func deadlineMargin(rem time.Duration) time.Duration {
	return min(max(rem/10, 20*time.Millisecond), 250*time.Millisecond)
}

// jitter returns d plus up to half of it at random.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + rand.N(d/2+1)
}

// sleep waits d or until ctx ends, returning ctx's error then.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// keep wraps granted leases in a Lease and starts its keep-alive. The
// leases were granted after sent, so they last at least until sent + ttl;
// soon renews them at once.
func (c *Client) keep(grants []AcquireResult, ttl time.Duration, sent time.Time, soon bool) *Lease {
	l := &Lease{c: c, grants: grants, ttl: ttl, exited: make(chan struct{}), lost: make(chan struct{})}
	l.soon = soon
	if ttl > 0 {
		l.expires = sent.Add(ttl)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l.ctx, l.stop = context.WithCancel(c.life)
	if c.closed {
		close(l.exited)
		l.err = ErrClosed
		close(l.lost)
		return l
	}
	c.bg.Add(1)
	go l.keepAlive()
	return l
}

// keepAlive renews the leases every ttl/3 until Release or a renewal fails.
// A lease without a ttl needs no renewal: it only waits for Release or
// Client.Close.
func (l *Lease) keepAlive() {
	defer l.c.bg.Done()
	defer close(l.exited)
	if l.ttl <= 0 {
		<-l.ctx.Done()
		if l.c.life.Err() != nil {
			l.lose(fmt.Errorf("klock: lease %s on %s: %w", l.ID(), l.Resource(), ErrClosed))
		}
		return
	}
	// The first renewal comes a third of the ttl after the acquire was
	// sent, or at once for a lease that may be older.
	l.mu.Lock()
	first := time.Until(l.expires.Add(-l.ttl * 2 / 3))
	if l.soon {
		first = 0
	}
	l.mu.Unlock()
	t := time.NewTimer(max(first, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-l.ctx.Done():
			if l.c.life.Err() != nil {
				l.lose(fmt.Errorf("klock: lease %s on %s is no longer renewed: %w", l.ID(), l.Resource(), ErrClosed))
			}
			return
		case <-t.C:
		}
		next, err := l.renew()
		if err != nil {
			if l.ctx.Err() != nil && l.c.life.Err() == nil {
				return // released meanwhile
			}
			l.lose(err)
			return
		}
		t.Reset(next)
	}
}

// renew heartbeats every lease of the set, retrying transient refusals,
// until they are renewed or the earliest expiry is near. It returns the
// delay until the next renewal.
//
// Renewals are given up a margin before the lease expires, so that the
// holder hears of the loss before anyone else can be granted it. When the
// daemon has been unreachable until a margin before that (a restart, say,
// while the redial backoff sleeps), one immediate redial and renewal are
// tried before the lease is declared lost.
func (l *Lease) renew() (time.Duration, error) {
	l.mu.Lock()
	expires := l.expires
	l.mu.Unlock()
	margin := min(l.ttl/10, 250*time.Millisecond)
	deadline := expires.Add(-margin)
	last, cancelLast := context.WithDeadline(l.ctx, deadline)
	defer cancelLast()
	ctx, cancel := context.WithDeadline(last, deadline.Add(-margin))
	defer cancel()
	lastTry := false
	var renewed time.Time
	for i := 0; i < len(l.grants); {
		g := &l.grants[i]
		sent := time.Now()
		_, err := l.c.Heartbeat(ctx, g.LeaseID, 0)
		switch {
		case err == nil:
			if exp := sent.Add(l.ttl); renewed.IsZero() || exp.Before(renewed) {
				renewed = exp
			}
			i++
			continue
		case errors.Is(err, ErrNotFound):
			return 0, fmt.Errorf("klock: lease %s on %s was lost: it expired or was revoked or released "+
				"before it could be renewed: %w", g.LeaseID, g.Resource, err)
		case errors.Is(err, context.DeadlineExceeded) && l.ctx.Err() == nil && !lastTry:
			lastTry, ctx = true, last
			l.c.redialNow()
			continue
		case errors.Is(err, context.DeadlineExceeded) && l.ctx.Err() == nil:
			return 0, fmt.Errorf("klock: lease %s on %s was lost: it could not be renewed before it expired "+
				"(daemon unreachable?): %w", g.LeaseID, g.Resource, err)
		case keepAliveAction(codeOf(err)) == actUntilExpiry || keepAliveAction(codeOf(err)) == actResend:
			// UNAVAILABLE: the daemon cannot make the renewal durable (its
			// disk is full); the lease keeps its expiry meanwhile.
			if serr := sleep(ctx, jitter(max(l.ttl/20, 5*time.Millisecond))); serr != nil && lastTry {
				return 0, fmt.Errorf("klock: lease %s on %s was lost: renewal kept failing until it expired: %w",
					g.LeaseID, g.Resource, err)
			}
		default:
			return 0, fmt.Errorf("klock: lease %s on %s was lost: renewal failed: %w", g.LeaseID, g.Resource, err)
		}
	}
	l.mu.Lock()
	l.expires = renewed
	l.mu.Unlock()
	return max(time.Until(renewed.Add(-l.ttl*2/3)), time.Millisecond), nil
}
