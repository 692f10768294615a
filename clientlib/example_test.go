package clientlib_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/klockd/klock/clientlib"
)

// The seed SDK's "Complete Example": two agents, Wait-Die on one file.
func ExampleClient_AcquireLease() {
	stop := startKlockd() // runs a private klockd and sets KLOCK_SOCKET to its socket
	defer stop()
	ctx := context.Background()

	klock, err := clientlib.Dial(ctx, clientlib.Options{}) // the socket from KLOCK_SOCKET
	if err != nil {
		log.Fatal(err)
	}
	defer klock.Close()

	// Register two agents: lower priority = older = higher precedence.
	if err := klock.RegisterAgent(ctx, "agent-senior", 100); err != nil {
		log.Fatal(err)
	}
	if err := klock.RegisterAgent(ctx, "agent-junior", 200); err != nil {
		log.Fatal(err)
	}

	// Senior acquires a lease on auth.ts.
	senior, err := klock.AcquireLease(ctx, "agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("senior:", senior.Success, senior.Resource)

	// Junior tries the same file: DIE.
	junior, err := klock.AcquireLease(ctx, "agent-junior", "s2", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("junior:", junior.Success, junior.Reason, "held by", junior.HeldBy)

	// Junior can work on a different file.
	other, err := klock.AcquireLease(ctx, "agent-junior", "s2", "FILE", "/src/utils.ts", "MUTATES", time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("junior (other file):", other.Success, other.Resource)

	// Cleanup.
	for _, id := range []string{senior.LeaseID, other.LeaseID} {
		if _, err := klock.ReleaseLease(ctx, id); err != nil {
			log.Fatal(err)
		}
	}
	n, err := klock.ActiveLeaseCount(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("active leases:", n)
	// Output:
	// senior: true FILE:/src/auth.ts
	// junior: false DIE held by agent-senior
	// junior (other file): true FILE:/src/utils.ts
	// active leases: 0
}

// The seed SDK's "Wait-Die Protocol in Action": the junior is told DIE while
// the senior holds the file, and gets it once the senior's lease expires.
// Where the seed sleeps and polls, Acquire does the retrying: it blocks,
// retrying after each DIE's wait_time, until the lease is granted, and then
// keeps it alive until Release.
func ExampleClient_Acquire() {
	stop := startKlockd()
	defer stop()
	ctx := context.Background()

	klock, err := clientlib.Dial(ctx, clientlib.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer klock.Close()
	if err := klock.RegisterAgent(ctx, "senior", 100); err != nil {
		log.Fatal(err)
	}
	if err := klock.RegisterAgent(ctx, "junior", 200); err != nil {
		log.Fatal(err)
	}

	// Senior holds a lock (for a second, not renewed).
	if _, err := klock.AcquireLease(ctx, "senior", "s1", "FILE", "/db.ts", "MUTATES", time.Second); err != nil {
		log.Fatal(err)
	}

	// Junior tries and gets DIE.
	result, err := klock.AcquireLease(ctx, "junior", "s2", "FILE", "/db.ts", "MUTATES", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("junior:", result.Success, result.Reason)

	// Junior blocks until the senior's lease has expired.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lease, err := klock.Acquire(ctx, clientlib.AcquireRequest{
		AgentID: "junior", SessionID: "s2", TTL: 5 * time.Second,
		Intents: []clientlib.Intent{{ResourceType: "FILE", ResourcePath: "/db.ts", Predicate: "MUTATES"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("junior acquired", lease.Resource(), "after the senior's lease expired")

	// While the work runs, the lease is renewed every TTL/3; if a renewal
	// fails, lease.Lost() is closed and lease.Err() says why.
	select {
	case <-lease.Lost():
		log.Fatal(lease.Err())
	default:
	}
	if err := lease.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// junior: false DIE
	// junior acquired FILE:/db.ts after the senior's lease expired
}
