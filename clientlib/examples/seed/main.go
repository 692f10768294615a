// Command seed is the original Klock SDK's "Complete Example" written with
// the Go client, as a user would write it: clientlib.Dial with no options
// finds klockd, or starts it on first use. From a clone, with klockd on
// PATH (go build -o ~/.local/bin/ ./cmd/...):
//
//	go run ./clientlib/examples/seed
//
// tests/autostart_test.go runs it as a fresh user with no daemon running.
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/klockd/klock/clientlib"
)

func main() {
	ctx := context.Background()
	klock, err := clientlib.Dial(ctx, clientlib.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer klock.Close()

	// Register two agents
	must(klock.RegisterAgent(ctx, "agent-senior", 100)) // Older = higher priority
	must(klock.RegisterAgent(ctx, "agent-junior", 200)) // Younger = lower priority

	// Senior acquires a lease on auth.ts
	senior, err := klock.AcquireLease(ctx, "agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	must(err)
	fmt.Printf("Senior: success=%v resource=%s\n", senior.Success, senior.Resource)

	// Junior tries the same file → DIE
	junior, err := klock.AcquireLease(ctx, "agent-junior", "s2", "FILE", "/src/auth.ts", "MUTATES", time.Minute)
	must(err)
	fmt.Printf("Junior: success=%v reason=%s held_by=%s\n", junior.Success, junior.Reason, junior.HeldBy)

	// Junior can work on a different file → OK
	other, err := klock.AcquireLease(ctx, "agent-junior", "s2", "FILE", "/src/utils.ts", "MUTATES", time.Minute)
	must(err)
	fmt.Printf("Junior (other file): success=%v resource=%s\n", other.Success, other.Resource)

	// Cleanup
	_, err = klock.ReleaseLease(ctx, senior.LeaseID)
	must(err)
	_, err = klock.ReleaseLease(ctx, other.LeaseID)
	must(err)
	n, err := klock.ActiveLeaseCount(ctx)
	must(err)
	fmt.Printf("Active leases: %d\n", n)
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
