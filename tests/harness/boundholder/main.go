// Command boundholder is a test helper for leases bound to their process:
// it takes one lease through clientlib, which binds it to this process by
// default, prints the grant as one JSON line, then exits without releasing
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
)

func main() {
	socket := flag.String("socket", "", "klockd's socket")
	agent := flag.String("agent", "holder", "agent id (registered by the test)")
	path := flag.String("path", "/held", "FILE path to lease")
	ttl := flag.Duration("ttl", 10*time.Minute, "lease ttl; 0 = none")
	then := flag.String("then", "wait", "after the grant: exit (without releasing), wait (until killed), reconnect (drop the connection, renew from a new one, then wait)")
	flag.Parse()
	if err := run(*socket, *agent, *path, *ttl, *then); err != nil {
		fmt.Fprintln(os.Stderr, "boundholder:", err)
		os.Exit(1)
	}
}

func run(socket, agent, path string, ttl time.Duration, then string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: socket, NoReconnect: then == "reconnect"})
	if err != nil {
		return err
	}
	res, err := c.AcquireOnce(ctx, clientlib.AcquireRequest{AgentID: agent, SessionID: fmt.Sprint("s", os.Getpid()), TTL: ttl,
		Intents: []clientlib.Intent{{ResourceType: "FILE", ResourcePath: path, Predicate: "MUTATES"}}})
	if err != nil {
		return err
	}
	if !res.Success {
		return fmt.Errorf("not granted: %s %s", res.Reason, res.Message)
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
