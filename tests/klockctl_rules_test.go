package tests

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/klockd/klock/tests/harness"
)

// klockctl's readings that issue 19 made one: --wait, an unregistered
// agent, an empty --agent.

// TestKlockctlWaitHasOneMeaning: --wait 0 answers at once for acquire and
// run alike; forever (or a negative value) waits without limit.
func TestKlockctlWaitHasOneMeaning(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	held := kcYoungHolds(t, d, "senior", "junior", "/w")

	// 0: at once, for both commands. The senior would WAIT: it is told so.
	kcExpect(t, d, 1, []string{"WAIT", "junior"}, "acquire", "--agent", "senior", "--wait", "0", "/w")
	kcExpect(t, d, 1, []string{"WAIT", "junior"}, "run", "--agent", "senior", "--wait", "0", "/w", "--", "true")

	// forever, and a negative value: both wait until the holder releases.
	for _, wait := range []string{"forever", "-1"} {
		p := kcStart(t, d, "acquire", "--json", "--agent", "senior", "--wait", wait, "/w")
		kcWaitUntilQueued(t, d, "senior")
		kcOK(t, d, nil, "release", held.LeaseID)
		r := p.wait(t)
		var got kcLease
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.AgentID != "senior" {
			t.Fatalf("acquire --wait %s = %d, %q, %q; want the senior granted after the release", wait, r.code, r.stdout, r.stderr)
		}
		kcOK(t, d, nil, "release", got.LeaseID)
		kcOK(t, d, &held, "acquire", "--json", "--agent", "junior", "/w")
	}
	for _, cmd := range [][]string{{"acquire", "/w"}, {"run", "/w", "--", "true"}} {
		r := kc(t, d, append([]string{cmd[0], "--wait", "soon"}, cmd[1:]...)...)
		if r.code != 2 || !strings.Contains(r.stderr, "forever") {
			t.Errorf("%s --wait soon: exit %d, stderr %q; want a usage error naming the allowed values", cmd[0], r.code, r.stderr)
		}
	}
}

// TestKlockctlRegistersUnknownAgentOnce: an acquire by an agent that is not
// registered registers it without a priority and says so, once; a
// registered agent's priority is left alone.
func TestKlockctlRegistersUnknownAgentOnce(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := kc(t, d, "acquire", "--agent", "newbie", "/n1")
	if r.code != 0 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "registered agent newbie with priority ") ||
		!strings.Contains(r.stderr, "klockctl agents register newbie --priority N") {
		t.Fatalf("first acquire as newbie: exit %d, stderr %q; want one line saying it was registered", r.code, r.stderr)
	}
	if r := kc(t, d, "acquire", "--agent", "newbie", "/n2"); r.code != 0 || r.stderr != "" {
		t.Errorf("second acquire as newbie: exit %d, stderr %q; want nothing said", r.code, r.stderr)
	}
	kcOK(t, d, nil, "agents", "register", "chosen", "--priority", "5")
	if r := kc(t, d, "run", "--agent", "chosen", "/n3", "--", "true"); r.code != 0 || r.stderr != "" {
		t.Errorf("run as a registered agent: exit %d, stderr %q; want nothing said", r.code, r.stderr)
	}
	var as kcAgents
	kcOK(t, d, &as, "agents", "--json")
	for _, a := range as.Agents {
		if a.AgentID == "chosen" && a.Priority != 5 {
			t.Errorf("agent chosen has priority %d after run; want the 5 it was given", a.Priority)
		}
	}
	r = kc(t, d, "run", "--agent", "runner", "/n4", "--", "true")
	if r.code != 0 || !strings.Contains(r.stderr, "registered agent runner") {
		t.Errorf("run as an unknown named agent: exit %d, stderr %q; want it registered, and said", r.code, r.stderr)
	}
}

// TestKlockctlEmptyAgentIsUsageError: --agent "" never falls back to a
// default agent.
func TestKlockctlEmptyAgentIsUsageError(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcExpect(t, d, 2, []string{"--agent is empty"}, "acquire", "--agent", "", "/e")
	kcExpect(t, d, 2, []string{"--agent is empty"}, "run", "--agent=", "/e", "--", "true")
	if n := kcCount(t, d); n != 0 {
		t.Errorf("count after refused acquires = %d; want 0", n)
	}
}
