// Command boundholder is a test helper for leases bound to their process:
// it takes one lease through clientlib (or -count of them), which binds it
// to this process by default, prints the grant as one JSON line, then exits without releasing
// it, waits to be killed, or reconnects first, as -then says. The tests in
// tests/ start it, kill it and watch what klockd does.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

func main() {
	socket := flag.String("socket", "", "klockd's socket")
	agent := flag.String("agent", "holder", "agent id (registered by the test)")
	path := flag.String("path", "/held", "FILE path to lease")
	ttl := flag.Duration("ttl", 10*time.Minute, "lease ttl; 0 = none")
	count := flag.Int("count", 1, "leases to take: path, or path/0 ... path/count-1 when count > 1, by acquire_many")
	then := flag.String("then", "wait", "after the grant: exit (without releasing), wait (until killed), reconnect (drop the connection, renew from a new one, then wait)")
	flag.Parse()
	if err := run(*socket, *agent, *path, *ttl, *count, *then); err != nil {
		fmt.Fprintln(os.Stderr, "boundholder:", err)
		os.Exit(1)
	}
}

func run(socket, agent, path string, ttl time.Duration, count int, then string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: socket, NoReconnect: then == "reconnect"})
	if err != nil {
		return err
	}
	res, err := acquire(ctx, c, agent, path, ttl, count)
	if err != nil {
		return err
	}
	if then == "reconnect" {
		c.Close()
		if c, err = clientlib.Dial(ctx, clientlib.Options{Socket: socket}); err != nil {
			return err
		}
		if _, err := c.Heartbeat(ctx, res.LeaseID, 0); err != nil {
			return fmt.Errorf("renewing from a new connection: %w", err)
		}
	}
	out, _ := json.Marshal(map[string]any{"lease_id": res.LeaseID, "pid": os.Getpid(), "bound_pid": res.BoundPID})
	fmt.Println(string(out))
	if then == "exit" {
		os.Exit(0) // without releasing, without closing the client
	}
	select {}
}

// acquire takes the lease on path, or count leases under it by
// acquire_many, and returns the first grant.
func acquire(ctx context.Context, c *clientlib.Client, agent, path string, ttl time.Duration, count int) (*clientlib.AcquireResult, error) {
	req := clientlib.AcquireRequest{AgentID: agent, SessionID: fmt.Sprint("s", os.Getpid()), TTL: ttl}
	if count <= 1 {
		req.Intents = []clientlib.Intent{{ResourceType: "FILE", ResourcePath: path, Predicate: "MUTATES"}}
		res, err := c.AcquireOnce(ctx, req)
		if err == nil && !res.Success {
			err = fmt.Errorf("not granted: %s %s", res.Reason, res.Message)
		}
		return res, err
	}
	var first *clientlib.AcquireResult
	for i := 0; i < count; {
		req.Intents = req.Intents[:0]
		for ; i < count && len(req.Intents) < protocol.MaxIntents; i++ {
			req.Intents = append(req.Intents, clientlib.Intent{ResourceType: "FILE", ResourcePath: fmt.Sprintf("%s/%d", path, i), Predicate: "MUTATES"})
		}
		res, err := c.AcquireMany(ctx, req)
		if err != nil {
			return nil, err
		}
		if !res.Success {
			return nil, fmt.Errorf("not granted: %s %s", res.Reason, res.Message)
		}
		if first == nil {
			first = &res.Leases[0]
		}
	}
	return first, nil
}
