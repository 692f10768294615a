package tests

import (
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/tests/harness"
)

// TestMCPAcquireFollowsRetryTable: klock_acquire follows protocol/README.md
// "Retries". With wait_seconds 0 it is one call, so RESOURCE_EXHAUSTED (the
// daemon's --max-leases reached) is a tool error at once, naming the limit;
// with wait_seconds it is a blocking acquire, which retries
// RESOURCE_EXHAUSTED with backoff and is granted once another agent's lease
// ends and makes room.
func TestMCPAcquireFollowsRetryTable(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-leases", "1"}})
	c := d.Client(t)
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, "holder", 1); err != nil {
		t.Fatal(err)
	}
	held, err := c.AcquireLease(ctx, "holder", "s", "FILE", "/repo/held.go", "MUTATES", time.Hour)
	if err != nil || !held.Success {
		t.Fatalf("holder's acquire = %+v, %v", held, err)
	}
	m := startMCP(t, d.Socket, "retrier")

	r := m.call(t, "klock_acquire", map[string]any{"paths": []string{"/repo/wanted.go"}})
	text := resultText(r)
	t.Logf("klock_acquire at the lease limit, wait_seconds 0: %s", text)
	if !r.IsError || !strings.Contains(text, "limit (1) is reached") || !strings.Contains(text, "klock_release") {
		t.Fatalf("klock_acquire at the lease limit = error %v %q; want a tool error naming the limit at once", r.IsError, text)
	}

	// The holder's lease now ends in 2 s; until then every attempt is
	// refused, and a blocking acquire keeps asking.
	if _, err := c.Heartbeat(ctx, held.LeaseID, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	var out struct {
		Granted bool `json:"granted"`
		Leases  []struct {
			Resource string `json:"resource"`
		} `json:"leases"`
	}
	m.callOK(t, "klock_acquire", map[string]any{"paths": []string{"/repo/wanted.go"}, "wait_seconds": 60}, &out)
	if !out.Granted || len(out.Leases) != 1 || out.Leases[0].Resource != "FILE:/repo/wanted.go" {
		t.Fatalf("klock_acquire with wait_seconds while the limit is reached = %+v; want it granted once the other lease ended", out)
	}
}
