package tests

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// mountTmpfs mounts a tmpfs of size (mount(8) syntax, "2m") on a new
// directory and unmounts it when the test ends. It needs root: outside CI
// the test is skipped without it; CI runs as root and fails instead.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (to mount a tmpfs); CI runs as root")
		}
		t.Skip("needs root to mount a tmpfs for the state directory; run the tests as root to include it")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -t tmpfs on %s: %v\n%s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// diskFault is a test of klockd with its state directory on a tmpfs that
// the test breaks and mends.
type diskFault struct {
	t     *testing.T
	d     *harness.Daemon
	r     *harness.Raw
	id    uint64
	acked map[string]uint64 // lease id → fence of every lease acknowledged and not released
	next  int               // paths /f0, /f1, ... taken so far
}

func (f *diskFault) call(op string, a *protocol.Args) *protocol.Response {
	f.id++
	return f.r.Call(f.id, op, a)
}

// acquire asks for the next path and records a grant.
func (f *diskFault) acquire() *protocol.Response {
	resp := f.call(protocol.OpAcquire, acquireArgs("holder", "s", fmt.Sprintf("/f%d", f.next), "MUTATES", 600000))
	f.next++
	if resp.OK {
		var g protocol.Grant
		mustOK(f.t, "acquire", resp, &g)
		f.acked[g.LeaseID] = g.Fence
	}
	return resp
}

func (f *diskFault) stats() protocol.StatsResult {
	var st protocol.StatsResult
	mustOK(f.t, "stats", f.call(protocol.OpStats, nil), &st)
	return st
}

// TestDiskFaultsAreUnavailableAndHeal runs klockd with its state directory
// on a tmpfs, and fills it with dd (ENOSPC) twice. (A tmpfs cannot be
// remounted read-only while klockd has files open for writing, so EROFS
// and EIO are tested in daemon/store with injected errors.) Each time: state changes (acquire,
// heartbeat, release, register) are answered UNAVAILABLE naming the errno
// and the file, a parked acquire too; reads are answered from memory and
// stats says degraded since when and why; klockctl status says so and
// klockctl acquire exits 1 with the message; the Go client returns
// ErrUnavailable when its context is short and succeeds across the fault
// when it is not; one WARN line is logged. The first time, klockd is also
// killed (-9) and restarted while the disk is still full: the acknowledged
// leases are all there and the first change finds the disk full again.
// When the disk is mended klockd heals by itself (one INFO line) and
// accepts changes; after a kill -9 and a restart exactly the acknowledged
// leases are there.
func TestDiskFaultsAreUnavailableAndHeal(t *testing.T) {
	harness.SkipInClusterMode(t, "the state lives in etcd; the state directory holds only the node id (etcd quorum loss is TestClusterEtcdQuorum)")
	mnt := mountTmpfs(t, "2m")
	d := harness.Start(t, harness.Options{StateDir: filepath.Join(mnt, "state")})
	f := &diskFault{t: t, d: d, r: d.Raw(t), acked: map[string]uint64{}}
	for i, a := range []string{"holder", "young", "old"} {
		mustOK(t, "register", f.call(protocol.OpRegisterAgent, args(protocol.ArgAgentID, a, protocol.ArgPriority, []int{5, 10, 1}[i])), nil)
	}
	for range 3 {
		mustOK(t, "acquire", f.acquire(), nil)
	}
	var young protocol.Grant
	mustOK(t, "young's acquire", f.call(protocol.OpAcquire, acquireArgs("young", "s", "/contended", "MUTATES", 600000)), &young)
	f.acked[young.LeaseID] = young.Fence

	for round, c := range []struct {
		name, errno string
		brk, mend   func()
	}{
		{"full", "ENOSPC",
			func() { exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(mnt, "fill"), "bs=64k").Run() },
			func() {
				if err := os.Remove(filepath.Join(mnt, "fill")); err != nil {
					t.Fatal(err)
				}
			}},
		// The same again: a second fault after healing is a fault of its own.
		{"full again", "ENOSPC",
			func() { exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(mnt, "fill"), "bs=64k").Run() },
			func() {
				if err := os.Remove(filepath.Join(mnt, "fill")); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Logf("round %d: disk %s", round, c.name)
		// A bystander's acquire parks behind young's lease.
		by := d.Raw(t)
		by.Send(1, protocol.OpAcquire, parkArgs("old", "s", "/contended", "MUTATES", 600000, 600000))
		waitFor(t, "the bystander's acquire to park", func() bool { return f.stats().Waiters == 1 })

		c.brk()
		// A little room may be left in the log's last page: acquire until
		// the disk says no.
		var resp *protocol.Response
		for i := 0; i < 5000; i++ {
			if resp = f.acquire(); !resp.OK {
				break
			}
		}
		expectCode(t, "acquire on a broken disk", resp, protocol.CodeUnavailable)
		for _, want := range []string{c.errno, filepath.Join(mnt, "state"), "nothing was changed"} {
			if !strings.Contains(resp.Error.Message, want) {
				t.Errorf("UNAVAILABLE message %q lacks %q", resp.Error.Message, want)
			}
		}
		expectCode(t, "the bystander's parked acquire", by.Recv(), protocol.CodeUnavailable)
		for _, op := range []struct {
			name string
			a    *protocol.Args
		}{
			{protocol.OpHeartbeat, args(protocol.ArgLeaseID, young.LeaseID)},
			{protocol.OpRelease, args(protocol.ArgLeaseID, young.LeaseID)},
			{protocol.OpRegisterAgent, args(protocol.ArgAgentID, "newcomer")},
		} {
			expectCode(t, op.name+" on a broken disk", f.call(op.name, op.a), protocol.CodeUnavailable)
		}

		// Reads are served, and show exactly what was acknowledged.
		if got := leaseFences(t, f.r, 1000+uint64(round)); !maps.Equal(got, f.acked) {
			t.Fatalf("leases while degraded = %v; want the acknowledged %v", got, f.acked)
		}
		st := f.stats()
		if !st.Degraded || st.DegradedSince == 0 || !strings.Contains(st.DegradedReason, c.errno) {
			t.Fatalf("stats while degraded = %+v; want degraded, since, and %s", st, c.errno)
		}
		if round == 0 {
			// kill -9 while degraded, and a restart on the still full disk:
			// everything acknowledged is there, and the first change
			// finds the disk full again.
			d.Kill(t)
			d.Restart(t)
			f.r = d.Raw(t)
			if got := leaseFences(t, f.r, 2000); !maps.Equal(got, f.acked) {
				t.Fatalf("leases after kill -9 while degraded = %v; want the acknowledged %v", got, f.acked)
			}
			expectCode(t, "acquire after the restart on a full disk", f.acquire(), protocol.CodeUnavailable)
			if st := f.stats(); !st.Degraded {
				t.Fatalf("stats after the restart and a refused change = %+v; want degraded", st)
			}
		}
		out := kc(t, d, "status")
		if out.code != 0 || !strings.Contains(out.stdout, "DEGRADED since") || !strings.Contains(out.stdout, c.errno) {
			t.Errorf("klockctl status while degraded: exit %d\n%s%s", out.code, out.stdout, out.stderr)
		}
		out = kc(t, d, "acquire", "--agent", "holder", "FILE:/by-klockctl")
		if out.code != 1 || !strings.Contains(out.stderr, "cannot make state changes durable") {
			t.Errorf("klockctl acquire while degraded: exit %d; want 1 with the message\n%s%s", out.code, out.stdout, out.stderr)
		}
		// The Go client retries within its context, then says UNAVAILABLE.
		gc := d.Client(t)
		short, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := gc.RegisterAgent(short, "go-client", 3)
		cancel()
		if !errors.Is(err, clientlib.ErrUnavailable) {
			t.Errorf("Go client RegisterAgent while degraded = %v; want ErrUnavailable", err)
		}
		// One with time to spare succeeds once the disk is mended.
		healed := make(chan error, 1)
		go func() { healed <- gc.RegisterAgent(testCtx(t), "patient", 4) }()

		c.mend()
		waitFor(t, "klockd to heal", func() bool { return !f.stats().Degraded })
		if err := <-healed; err != nil {
			t.Errorf("Go client RegisterAgent across the fault = %v; want success once healed", err)
		}
		mustOK(t, "acquire after healing", f.acquire(), nil)
	}

	logs := d.Logs()
	if n := strings.Count(logs, "cannot make state changes durable: changes are refused"); n != 3 {
		t.Errorf("%d WARN lines for entering degraded mode; want one per fault (3, one after the restart):\n%s", n, logs)
	}
	if n := strings.Count(logs, "can make state changes durable again"); n != 2 {
		t.Errorf("%d INFO lines for healing; want 2:\n%s", n, logs)
	}

	d.Kill(t)
	d.Restart(t)
	if got := leaseFences(t, d.Raw(t), 1); !maps.Equal(got, f.acked) {
		t.Fatalf("leases after kill -9 and restart = %v; want exactly the acknowledged %v", got, f.acked)
	}
}
