package engine

import (
	"fmt"

	"github.com/klockd/klock/protocol"
)

// maxWaitTime caps the suggested retry delay (protocol/README.md "acquire").
const maxWaitTime = 1000

// denial turns a verdict into the Denial a client sees: the wait_time
// formula, held_by and a sentence for humans.
func (e *Engine) denial(now int64, a *agent, session string, v *verdict) Denial {
	d := Denial{Reason: v.reason, WaitTime: maxWaitTime}
	if v.maxExpiry > 0 {
		d.WaitTime = min(maxWaitTime, max(1, v.maxExpiry-now))
	}
	if v.by != nil {
		d.HeldBy, d.HeldPath = v.by.id, v.byPath
	}
	d.Message = message(a, session, v)
	return d
}

func message(a *agent, session string, v *verdict) string {
	switch v.reason {
	case protocol.ReasonResourceLocked:
		return fmt.Sprintf("%s is frozen by an operator; no lease on it can be acquired until it is thawed", where(v))
	case protocol.ReasonSessionExpired:
		return fmt.Sprintf("session %q of %s has ended; start a new session", session, a.id)
	case protocol.ReasonConflict:
		return fmt.Sprintf("%s is held by %s in session %q (%s); %s cannot wait for itself from session %q",
			where(v), a.id, v.bySession, v.byPred, a.id, session)
	case protocol.ReasonDie:
		if v.byQueued {
			return fmt.Sprintf("%s is awaited by %s (%s, priority %d), queued first; %s (priority %d) is younger and must die and retry",
				where(v), v.by.id, v.byPred, v.by.priority, a.id, a.priority)
		}
		older := "is younger"
		if v.by.priority == a.priority {
			older = "has equal priority"
		}
		return fmt.Sprintf("%s is held by %s (%s, priority %d); %s (priority %d) %s and must die and retry",
			where(v), v.by.id, v.byPred, v.by.priority, a.id, a.priority, older)
	case protocol.ReasonWait:
		return fmt.Sprintf("%s is held by %s (%s, priority %d); %s (priority %d) is older and may wait",
			where(v), v.by.id, v.byPred, v.by.priority, a.id, a.priority)
	}
	return "granted"
}

// where names the key that decided a denial: the requested key, or an
// overlapping one and how it overlaps the requested key.
func where(v *verdict) string {
	switch {
	case v.byKey == "" || v.byKey == v.key:
		return v.key
	case protocol.Covers(v.byKey, v.key):
		return fmt.Sprintf("%s (which covers %s)", v.byKey, v.key)
	}
	return fmt.Sprintf("%s (under %s)", v.byKey, v.key)
}
