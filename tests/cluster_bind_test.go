package tests

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// boundHelperEnv makes the test binary a helper process (TestMain): it
// takes a lease bound to itself, without a ttl, on the socket the variable
// names, prints its id and waits to be killed.
const boundHelperEnv = "KLOCK_TEST_BOUND_HELPER"

// runBoundHelper is the helper process's main.
func runBoundHelper(socket string) {
	fail := func(err error) {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	c, err := net.Dial("unix", socket)
	if err != nil {
		fail(err)
	}
	a := &protocol.Args{AgentID: "bound", SessionID: "s", ResourceType: "FILE", ResourcePath: "/bound", Predicate: "MUTATES", Bind: "process"}
	for _, x := range []protocol.Arg{protocol.ArgAgentID, protocol.ArgSessionID, protocol.ArgResourceType, protocol.ArgResourcePath, protocol.ArgPredicate, protocol.ArgBind} {
		a.Set(x)
	}
	frame, err := protocol.AppendRequest(nil, 1, protocol.OpAcquire, a)
	if err != nil {
		fail(err)
	}
	if _, err := c.Write(frame); err != nil {
		fail(err)
	}
	body, err := protocol.ReadFrame(bufio.NewReader(c), nil, protocol.DefaultMaxFrame)
	if err != nil {
		fail(err)
	}
	var resp protocol.Response
	var g protocol.AcquireResult
	if err := protocol.DecodeResponse(body, &resp); err != nil || !resp.OK {
		fail(fmt.Errorf("acquire: %v %+v", err, resp.Error))
	}
	if err := protocol.DecodeResult(resp.Result, &g); err != nil || !g.Success {
		fail(fmt.Errorf("acquire result: %v %+v", err, g))
	}
	fmt.Println("lease", g.LeaseID)
	time.Sleep(time.Hour) // until killed; its connection stays open
}

// TestClusterBoundLease: a lease bound to a process on node A, without a
// ttl, is held on node B, and ends on every node when the process exits
// (node A watches it and proposes its end).
func TestClusterBoundLease(t *testing.T) {
	kc := startKlockCluster(t, 1, 2)
	ctx := testCtx(t)
	b := kc.nodes[1].Client(t)
	registerAgents(t, ctx, b, map[string]int64{"bound": 1})

	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), boundHelperEnv+"="+kc.nodes[0].Socket)
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { helper.Process.Kill(); helper.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "lease ") {
		t.Fatalf("helper said %q, %v", line, err)
	}
	id := strings.TrimSpace(strings.TrimPrefix(line, "lease "))

	ls, _, err := b.ListLeases(ctx, clientlib.LeaseFilter{AgentID: "bound"})
	if err != nil || len(ls) != 1 || ls[0].LeaseID != id || ls[0].ExpiresAt != 0 {
		t.Fatalf("B lists %+v, %v; want the bound lease %s without an expiry", ls, err, id)
	}
	helper.Process.Kill()
	helper.Wait()
	waitFor(t, "the bound lease to end on B", func() bool {
		n, err := b.ActiveLeaseCount(ctx)
		return err == nil && n == 0
	})
	kc.sameTable(t, ctx)
}

func init() {
	if socket := os.Getenv(boundHelperEnv); socket != "" {
		runBoundHelper(socket)
		os.Exit(0)
	}
}
