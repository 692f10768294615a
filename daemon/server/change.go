package server

import (
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// A change is one state change asked of the engine: the op, its arguments,
// who asked, and the engine time it is made at. It is a plain value, and
// applyChange touches nothing but the engine, so the driver that runs it can
// be replaced: commit (commit.go) applies it under s.mu and then journals
// its records; a replicated driver would propose the same value to a shared
// log and apply it on every replica in log order.
type change struct {
	op     string         // a protocol op, or opExpire / opCancel
	args   *protocol.Args // the request's arguments; nil for the daemon's own changes
	caller engine.Caller  // who asked; zero for the daemon's own changes
	at     int64          // engine time, Unix ms; set by the driver
	waiter engine.WaiterID
	// bind is the process an acquire's leases are bound to (bind
	// "process"), identified by the server before the change is made;
	// proc is the process that ended, for opProcessEnd.
	bind *engine.Process
	proc engine.Process

	// room is where the acquire path puts what it would allocate
	// (applyAcquire): a connection's own, reused by each of its changes
	// (newChange); nil for the others, which get one when they need it.
	room *acquireRoom

	// step is the work of the next step of a long change (sized in
	// time, stepsize.go); 0 = stepWork. The local driver sets it; a
	// change from the cluster log has none, so every node applies the
	// same steps.
	step int
}

// acquireRoom is room the acquire path fills instead of allocating: the
// engine request's one intent (the engine keeps none of it), and the grant
// answered, which lives until the answer is encoded. What it holds is
// written before it is read; a change that reuses it leaves it as it was,
// which saves copying it with every change (newChange).
type acquireRoom struct {
	one   [1]engine.Intent
	grant protocol.Grant
}

// steps reports whether ch is made in steps (outcome.more).
func (ch *change) steps() bool {
	switch ch.op {
	case protocol.OpEndSession, protocol.OpEvictExpired, opExpire, opProcessEnd:
		return true
	}
	return false
}

// work is the work bound of ch's next step.
func (ch *change) work() int {
	if ch.step > 0 {
		return ch.step
	}
	return stepWork
}

// The daemon's own changes, which no client asks for.
const (
	opExpire = "klockd.expire" // the expiry timer: remove what is due at ch.at
	opCancel = "klockd.cancel" // a closed connection drops its parked acquire ch.waiter
	// opProcessEnd: process ch.proc ended; the leases bound to it end.
	opProcessEnd = "klockd.process_end"
)

// outcome is what applying a change did.
type outcome struct {
	result  any   // the caller's answer; nil when err is set or the acquire parked
	err     error // the caller's error answer
	wakes   []engine.Wakeup
	parked  engine.WaiterID // the caller's acquire was parked under this id; 0 = not parked
	expired int             // opExpire: leases removed
	ended   int             // opProcessEnd: active leases ended
	// more says the change was one step of a long one (an end_session,
	// the end of a process with many leases, or an expiry of many leases,
	// see stepWork): the driver applies it again, letting other requests
	// in between, until more is false.
	more bool
}

// stepWork bounds the leases (and queued requests) one step of a long
// change ends, so that no change holds the engine for long: the driver
// releases the lock between steps. The local driver makes steps smaller
// when they take long (stepsize.go). Steps of 250 were tried: the stats
// probe's p99 fell a little and its longest wait did not, with more steps
// to drive (BENCHMARKS.md "Stall probe").
const stepWork = 1000

// applyChange makes ch on eng. It does no I/O and reads no clock: the same
// change applied to the same state gives the same outcome (lease ids aside,
// which the engine draws at random).
func applyChange(eng *engine.Engine, ch *change) outcome {
	a, now, who := ch.args, ch.at, ch.caller
	switch ch.op {
	case protocol.OpRegisterAgent:
		ag, err := eng.Register(now, who, a.AgentID, a.Priority, a.Has(protocol.ArgPriority))
		if err != nil {
			return outcome{err: err}
		}
		return outcome{result: &protocol.RegisterResult{AgentID: ag.ID, Priority: ag.Priority, RegisteredAt: ag.RegisteredAt}}
	case protocol.OpUnregisterAgent:
		ok, err := eng.Unregister(now, who, a.AgentID)
		return answer(&protocol.UnregisterResult{Unregistered: ok}, nil, err)
	case protocol.OpAcquire, protocol.OpAcquireMany:
		return applyAcquire(eng, ch)
	case protocol.OpRelease:
		ok, wakes, err := eng.Release(now, who, a.LeaseID)
		return answer(releaseResult(ok), wakes, err)
	case protocol.OpHeartbeat:
		if a.Has(protocol.ArgTTL) && a.TTL == 0 {
			// The engine reads 0 as "keep the current ttl"; on the wire ttl
			// is optional but, when given, at least 1 ms like every ttl.
			return outcome{err: &protocol.Error{Code: protocol.CodeInvalidArgument, Message: "klock: argument ttl must be at least 1 ms; omit it to keep the lease's ttl"}}
		}
		l, err := eng.Heartbeat(now, who, a.LeaseID, a.TTL)
		if err != nil {
			return outcome{err: err}
		}
		return outcome{result: &protocol.HeartbeatResult{LeaseID: l.ID, ExpiresAt: wireExpiry(l.ExpiresAt)}}
	case protocol.OpEndSession:
		n, wakes, more, err := eng.EndSessionStep(now, who, a.AgentID, a.SessionID, ch.work())
		o := answer(&protocol.EndSessionResult{Released: n}, wakes, err)
		o.more = more && err == nil
		return o
	case protocol.OpEvictExpired:
		n, wakes, more := eng.ExpireStep(now, ch.work())
		return outcome{result: &protocol.EvictResult{Evicted: n}, wakes: wakes, more: more}
	case protocol.OpRevoke:
		ok, wakes, err := eng.Revoke(now, who, a.LeaseID)
		return answer(&protocol.RevokeResult{Revoked: ok}, wakes, err)
	case protocol.OpFreeze:
		ok, wakes, err := eng.Freeze(now, who, a.ResourceType, a.ResourcePath)
		return answer(&protocol.FreezeResult{Frozen: ok}, wakes, err)
	case protocol.OpThaw:
		ok, err := eng.Thaw(now, who, a.ResourceType, a.ResourcePath)
		return answer(&protocol.FreezeResult{Frozen: ok}, nil, err)
	case opExpire:
		n, wakes, more := eng.ExpireStep(now, ch.work())
		return outcome{wakes: wakes, expired: n, more: more}
	case opCancel:
		return outcome{wakes: eng.Cancel(now, ch.waiter)}
	case opProcessEnd:
		n, wakes, more := eng.ProcessEndedStep(now, ch.proc, ch.work())
		return outcome{wakes: wakes, ended: n, more: more}
	}
	return outcome{err: &protocol.Error{Code: protocol.CodeInternal, Message: "klock: internal error: op " + quote(ch.op) + " is not a state change"}}
}

// released and notReleased are release's two answers, shared by every
// request and never modified: one allocation fewer per release.
var released, notReleased = &protocol.ReleaseResult{Released: true}, &protocol.ReleaseResult{}

func releaseResult(ok bool) *protocol.ReleaseResult {
	if ok {
		return released
	}
	return notReleased
}

// answer is the outcome of an engine call that answers result unless it
// failed; its wake-ups count either way.
func answer(result any, wakes []engine.Wakeup, err error) outcome {
	if err != nil {
		return outcome{err: err, wakes: wakes}
	}
	return outcome{result: result, wakes: wakes}
}

// applyAcquire serves acquire (one intent from the flat args) and
// acquire_many. A WAIT verdict with wait_timeout is parked: its answer
// comes later as a wake-up.
func applyAcquire(eng *engine.Engine, ch *change) outcome {
	room := ch.room
	if room == nil {
		room = new(acquireRoom)
	}
	req, many := acquireRequest(ch, room.one[:0])
	var res engine.Result
	var err error
	if many {
		res, err = eng.AcquireMany(ch.at, ch.caller, req)
	} else {
		res, err = eng.Acquire(ch.at, ch.caller, req)
	}
	switch {
	case err != nil:
		return outcome{err: err}
	case res.Queued:
		return outcome{parked: res.Waiter}
	}
	if res.Granted && !many && len(res.Leases) > 0 {
		room.grant = grant(&res.Leases[0])
		return outcome{result: &room.grant}
	}
	return outcome{result: acquireAnswer(&res, many)}
}

// acquireRequest builds the engine request of an acquire (one intent from
// the flat args, appended to intents) or acquire_many change, and says
// which it is.
func acquireRequest(ch *change, intents []engine.Intent) (engine.AcquireRequest, bool) {
	a, many := ch.args, ch.op == protocol.OpAcquireMany
	req := engine.AcquireRequest{
		AgentID:     a.AgentID,
		SessionID:   a.SessionID,
		TTL:         a.TTL,
		WaitTimeout: a.WaitTimeout,
		Idem:        a.Idem,
		Bind:        ch.bind,
	}
	if many {
		req.Intents = make([]engine.Intent, len(a.Intents))
		for i, in := range a.Intents {
			req.Intents[i] = engine.Intent{ResourceType: in.ResourceType, ResourcePath: in.ResourcePath, Predicate: in.Predicate,
				ClientPath: in.ClientPath}
		}
	} else {
		req.Intents = append(intents, engine.Intent{ResourceType: a.ResourceType, ResourcePath: a.ResourcePath, Predicate: a.Predicate,
			ClientPath: a.ClientPath})
	}
	return req, many
}
