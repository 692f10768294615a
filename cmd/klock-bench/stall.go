package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// Stall is issue 18's stall probe: on the instance holding the
// many-leases leases, one client pages through every lease while another
// ends a session of -session leases, each with a parked waiter, and a
// third calls stats in a loop; the cell's latencies are those stats calls.
// Only klock runs it, once per repetition.
const Stall = "stall"

// How the stall probe's session ends (-stall-by): its holder ends it, or
// its leases are bound to a process of their own (this tool re-executed
// as "bound-holder"), which is killed.
const (
	StallByEndSession = "end_session"
	StallByExit       = "exit"
)

// stallBackend is a back end that can run the stall probe.
type stallBackend interface {
	// Stall runs one probe on a back end already holding the many-leases
	// leases, with a session of session leases and as many waiters; rep
	// keeps the names of repetitions apart; by is how the session ends
	// (StallByEndSession or StallByExit).
	Stall(ctx context.Context, rep, session int, by string) (Cell, error)
}

// waitersPerConn is how many acquires one connection parks: under the
// daemon's default max-inflight of 1024.
const waitersPerConn = 1000

// Stall sets up a session of n leases on their own resources, a senior
// agent's parked acquire on each, then measures stats while the session
// ends (by end_session, or by its process's exit) and the leases are paged
// through, and cleans up.
func (b *klockBackend) Stall(ctx context.Context, rep, n int, by string) (Cell, error) {
	cell := Cell{Backend: b.name, Workload: Stall, Workers: 1, Rep: rep}
	c, err := b.dial(ctx, 0)
	if err != nil {
		return cell, err
	}
	defer c.Close()
	ender, waiter := "stall-ender-"+strconv.Itoa(rep), "stall-waiter-"+strconv.Itoa(rep)
	// The waiter is older than every holder (Wait-Die lets it wait), the
	// ender younger than the many-leases holder.
	if err := c.RegisterAgent(ctx, waiter, int64(rep)); err != nil {
		return cell, err
	}
	if err := c.RegisterAgent(ctx, ender, 1<<41+int64(rep)); err != nil {
		return cell, err
	}
	prefix := fmt.Sprintf("/stall/%d/", rep)
	var holder *exec.Cmd
	if by == StallByExit {
		holder, err = startBoundHolder(ctx, b.srvs[0].socket, ender, prefix, n)
		if err != nil {
			return cell, err
		}
		defer func() {
			holder.Process.Kill()
			holder.Wait()
		}()
	} else if err := fillLeases(ctx, c, ender, "big", prefix, n); err != nil {
		return cell, fmt.Errorf("klock-bench: stall: %w", err)
	}
	parked, err := b.parkWaiters(ctx, waiter, prefix, n)
	if err != nil {
		return cell, err
	}
	defer func() {
		for _, p := range parked {
			p.c.Close()
		}
	}()
	for {
		st, err := c.Stats(ctx)
		if err != nil {
			return cell, err
		}
		if st.Waiters >= n {
			break
		}
		pause(ctx, 5*time.Millisecond)
		if ctx.Err() != nil {
			return cell, ctx.Err()
		}
	}

	// The probe, in a process of its own (probe.go), until the pager and
	// the ender are both done.
	probe, err := startStatsProbe(b.srvs[0].socket, rep)
	if err != nil {
		return cell, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	var pageErr, endErr, grantErr error
	wg.Add(3)
	go func() {
		defer wg.Done()
		cell.PageSeconds, cell.Pairs, pageErr = pageThrough(ctx, b, 0)
	}()
	granted := make(chan struct{})
	go func() {
		defer wg.Done()
		t0 := time.Now()
		if holder != nil {
			// Until the last waiter is granted: klockd answers nobody for
			// the end of a process.
			endErr = holder.Process.Kill()
			<-granted
			cell.EndSeconds = time.Since(t0).Seconds()
			return
		}
		released, err := c.EndSession(ctx, ender, "big")
		cell.EndSeconds = time.Since(t0).Seconds()
		if err == nil && released != n {
			err = fmt.Errorf("klock-bench: stall: end_session released %d; want %d", released, n)
		}
		endErr = err
	}()
	go func() {
		defer wg.Done()
		defer close(granted)
		grantErr = awaitGrants(parked)
	}()
	wg.Wait()
	lat, probeErr := probe.stop()
	if err := errors.Join(probeErr, pageErr, endErr, grantErr); err != nil {
		return cell, err
	}
	cell.Seconds = time.Since(start).Seconds()
	// The waiter now holds the session's resources: end its session too.
	if _, err := c.EndSession(ctx, waiter, "w"); err != nil {
		return cell, err
	}
	slices.Sort(lat)
	cell.Attempts = int64(len(lat))
	cell.PairsPerSec = float64(len(lat)) / cell.Seconds
	cell.setLatencies(lat)
	cell.MaxUs = micros(percentile(lat, 1))
	if rss, ok := b.RSS(); ok {
		cell.RSSBytes = rss
	}
	return cell, nil
}

// pageThrough lists every lease once, a page of 1000 at a time, and
// returns how long it took and how many it listed. A klockd older than
// paging has no cursor: one list_leases of 10000 (its largest page) is
// its pass, as in the measurement.
func pageThrough(ctx context.Context, b *klockBackend, node int) (float64, int64, error) {
	c, err := b.dial(ctx, node)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	t0 := time.Now()
	var n int64
	f := clientlib.LeaseFilter{Limit: 1000}
	for {
		ls, next, err := c.ListLeasesPage(ctx, f)
		if errors.Is(err, clientlib.ErrNoCursor) {
			ls, _, err := c.ListLeases(ctx, clientlib.LeaseFilter{Limit: 10000})
			return time.Since(t0).Seconds(), int64(len(ls)), err
		}
		if err != nil {
			return 0, n, err
		}
		n += int64(len(ls))
		if next == "" {
			return time.Since(t0).Seconds(), n, nil
		}
		f.After = next
	}
}

// parked is a connection with n acquires parked on it.
type parked struct {
	c net.Conn
	n int
}

// parkWaiters parks one acquire of agent (session "w") on each of
// prefix0..prefix(n-1), waitersPerConn per connection, written as raw
// frames: a hundred thousand blocked clientlib calls would cost the
// tool more than the daemon.
func (b *klockBackend) parkWaiters(ctx context.Context, agent, prefix string, n int) ([]parked, error) {
	var ps []parked
	fail := func(err error) ([]parked, error) {
		for _, p := range ps {
			p.c.Close()
		}
		return nil, fmt.Errorf("klock-bench: stall: parking waiters: %w", err)
	}
	for first := 0; first < n; first += waitersPerConn {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", b.srvs[0].socket)
		if err != nil {
			return fail(err)
		}
		p := parked{c: c, n: min(n, first+waitersPerConn) - first}
		ps = append(ps, p)
		var buf []byte
		for i := first; i < first+p.n; i++ {
			a := protocol.Args{AgentID: agent, SessionID: "w", ResourceType: "FILE", ResourcePath: prefix + strconv.Itoa(i),
				Predicate: "MUTATES", TTL: int64(klockHeldTTL / time.Millisecond), WaitTimeout: int64(10 * time.Minute / time.Millisecond)}
			a.Set(protocol.ArgAgentID | protocol.ArgSessionID | protocol.ArgResourceType | protocol.ArgResourcePath |
				protocol.ArgPredicate | protocol.ArgTTL | protocol.ArgWaitTimeout)
			if buf, err = protocol.AppendRequest(buf, uint64(i+1), protocol.OpAcquire, &a); err != nil {
				return fail(err)
			}
		}
		if _, err := c.Write(buf); err != nil {
			return fail(err)
		}
	}
	return ps, nil
}

// awaitGrants reads every parked acquire's answer and checks each is a
// grant.
func awaitGrants(ps []parked) error {
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body []byte
			for range p.n {
				p.c.SetReadDeadline(time.Now().Add(5 * time.Minute))
				b, err := protocol.ReadFrame(p.c, body, 1<<30)
				if err != nil {
					errs[i] = err
					return
				}
				body = b[:0]
				var resp protocol.Response
				var res protocol.AcquireResult
				if err := protocol.DecodeResponse(b, &resp); err != nil {
					errs[i] = err
					return
				}
				if !resp.OK || protocol.DecodeResult(resp.Result, &res) != nil || !res.Success {
					errs[i] = fmt.Errorf("klock-bench: stall: waiter %d answered %+v %+v", resp.ID, resp.Error, res)
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startBoundHolder starts this tool as "bound-holder": a process that takes
// n leases for agent (session "big") on prefix0..prefix(n-1) through
// clientlib, which binds them to that process, and waits to be killed.
func startBoundHolder(ctx context.Context, socket, agent, prefix string, n int) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "bound-holder", "-socket", socket, "-agent", agent, "-prefix", prefix, "-n", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("klock-bench: stall: the bound holder: %w", err)
	}
	return cmd, nil
}

// runBoundHolder is the bound-holder process (startBoundHolder). It says
// "ready" on stdout once it holds every lease, then waits to be killed.
func runBoundHolder(args []string) error {
	fs := flag.NewFlagSet("bound-holder", flag.ContinueOnError)
	socket := fs.String("socket", "", "klockd socket")
	agent := fs.String("agent", "", "agent holding the leases")
	prefix := fs.String("prefix", "", "resource path prefix")
	n := fs.Int("n", 0, "leases")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: *socket, NoReconnect: true})
	if err != nil {
		return err
	}
	if err := fillLeases(ctx, c, *agent, "big", *prefix, *n); err != nil {
		return err
	}
	fmt.Println("ready")
	select {}
}
