package tests

import (
	"testing"
	"time"
)

// TestSeedCompleteExample replays the seed SDK's "Complete Example" over
// the socket through clientlib.
func TestSeedCompleteExample(t *testing.T) {
	_, c, ctx := startClient(t, nil)

	if err := c.RegisterAgent(ctx, "agent-senior", 100); err != nil {
		t.Fatalf("RegisterAgent(agent-senior) = %v", err)
	}
	if err := c.RegisterAgent(ctx, "agent-junior", 200); err != nil {
		t.Fatalf("RegisterAgent(agent-junior) = %v", err)
	}
	senior, err := c.AcquireLease(ctx, "agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	if err != nil || !senior.Success {
		t.Fatalf("senior AcquireLease = %+v, %v; want success", senior, err)
	}
	if senior.AgentID != "agent-senior" || senior.Resource != "FILE:/src/auth.ts" || senior.LeaseID == "" || senior.Fence == 0 {
		t.Errorf("senior grant = %+v; want agent-senior on FILE:/src/auth.ts with id and fence", senior)
	}
	if until := time.Until(senior.ExpiresAt); until < 50*time.Second || until > 70*time.Second {
		t.Errorf("senior ExpiresAt in %v; want about 60s", until)
	}
	junior, err := c.AcquireLease(ctx, "agent-junior", "s2", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	if err != nil || junior.Success || junior.Reason != "DIE" {
		t.Fatalf("junior AcquireLease = %+v, %v; want DIE", junior, err)
	}
	if junior.WaitTime <= 0 || junior.WaitTime > time.Second || junior.HeldBy != "agent-senior" {
		t.Errorf("junior denial = %+v; want wait_time in (0, 1s] held by agent-senior", junior)
	}
	other, err := c.AcquireLease(ctx, "agent-junior", "s2", "FILE", "/src/utils.ts", "MUTATES", time.Minute)
	if err != nil || !other.Success {
		t.Fatalf("junior other file = %+v, %v; want success", other, err)
	}
	if other.Fence <= senior.Fence {
		t.Errorf("fences %d then %d; want increasing", senior.Fence, other.Fence)
	}
	for _, id := range []string{senior.LeaseID, other.LeaseID} {
		if ok, err := c.ReleaseLease(ctx, id); err != nil || !ok {
			t.Errorf("ReleaseLease(%s) = %v, %v; want true", id, ok, err)
		}
	}
	if ok, err := c.ReleaseLease(ctx, senior.LeaseID); err != nil || ok {
		t.Errorf("second ReleaseLease = %v, %v; want false, nil", ok, err)
	}
	if n, err := c.ActiveLeaseCount(ctx); err != nil || n != 0 {
		t.Errorf("ActiveLeaseCount = %d, %v; want 0", n, err)
	}
}

// TestSeedWaitDieExample replays the seed's "Wait-Die Protocol in Action"
// with a short ttl: the junior dies while the senior holds the file, and
// succeeds once the senior's lease has expired.
func TestSeedWaitDieExample(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"senior": 100, "junior": 200})

	const ttl = 300 * time.Millisecond
	held, err := c.AcquireLease(ctx, "senior", "s1", "FILE", "/db.ts", "MUTATES", ttl)
	if err != nil || !held.Success {
		t.Fatalf("senior AcquireLease = %+v, %v", held, err)
	}
	r, err := c.AcquireLease(ctx, "junior", "s2", "FILE", "/db.ts", "MUTATES", ttl)
	if err != nil || r.Success || r.Reason != "DIE" {
		t.Fatalf("junior AcquireLease = %+v, %v; want DIE", r, err)
	}

	// The daemon expires the senior's lease on time; the junior retries
	// after the suggested wait until it is granted.
	deadline := time.Now().Add(10 * time.Second)
	for !r.Success {
		if time.Now().After(deadline) {
			t.Fatalf("junior never acquired /db.ts after the senior's ttl; last %+v", r)
		}
		if r.Reason != "DIE" {
			t.Fatalf("junior retry = %+v; want DIE or success", r)
		}
		time.Sleep(r.WaitTime) // the protocol's own retry advice, not synchronisation
		if _, err := c.EvictExpired(ctx); err != nil {
			t.Fatalf("EvictExpired = %v", err)
		}
		if r, err = c.AcquireLease(ctx, "junior", "s2", "FILE", "/db.ts", "MUTATES", ttl); err != nil {
			t.Fatalf("junior retry: %v", err)
		}
	}
	if !time.Now().After(held.ExpiresAt.Add(-5 * time.Millisecond)) {
		t.Errorf("junior granted before the senior's lease expired at %v", held.ExpiresAt)
	}
}
