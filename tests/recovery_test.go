package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/tests/harness"
)

// recoveryLeases registers an agent and takes one lease per path, in that
// order (one log record each), and returns the lease ids.
func recoveryLeases(t *testing.T, d *harness.Daemon, paths ...string) []string {
	t.Helper()
	ctx := testCtx(t)
	c := d.Client(t)
	if err := c.RegisterAgent(ctx, "keeper", 7); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range paths {
		res, err := c.AcquireLease(ctx, "keeper", "s", "FILE", p, "MUTATES", time.Hour)
		if err != nil || !res.Success {
			t.Fatalf("acquire %s = %+v, %v", p, res, err)
		}
		ids = append(ids, res.LeaseID)
	}
	return ids
}

// activeLeases returns the ids of the daemon's active leases.
func activeLeases(t *testing.T, d *harness.Daemon) map[string]bool {
	t.Helper()
	ctx := testCtx(t)
	list, _, err := d.Client(t).ListLeases(ctx, clientlib.LeaseFilter{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, l := range list {
		out[l.LeaseID] = true
	}
	return out
}

// lastLog returns the newest log file in dir.
func lastLog(t *testing.T, dir string) string {
	t.Helper()
	logs, err := filepath.Glob(filepath.Join(dir, "log.????????????????"))
	if err != nil || len(logs) == 0 {
		t.Fatalf("no log in %s (%v)", dir, err)
	}
	slices.Sort(logs)
	return logs[len(logs)-1]
}

// recordStarts returns the offset of every record in a log (FORMAT.md:
// 24-byte header, then length(4) crc(4) body).
func recordStarts(t *testing.T, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for off := 24; off+8 <= len(b); off += 8 + int(binary.LittleEndian.Uint32(b[off:])) {
		offs = append(offs, int64(off))
	}
	return offs
}

// flipByte xors one byte of a file.
func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[at] ^= 0x20
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// klockdMustFail runs klockd on dir and returns its output, failing the
// test unless it exits with an error.
func klockdMustFail(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harness.StartTimeout)
	defer cancel()
	sockDir, err := os.MkdirTemp("", "klk")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	args := append([]string{"run", "--socket", filepath.Join(sockDir, "s.sock"), "--state-dir", dir}, extra...)
	out, err := exec.CommandContext(ctx, harness.Klockd(t), args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("klockd %v kept running; want it to refuse to start. Output:\n%s", args, out)
	}
	if err == nil {
		t.Fatalf("klockd %v exited 0; want an error. Output:\n%s", args, out)
	}
	return string(out)
}

func TestRecoveryCutsTornTail(t *testing.T) {
	harness.SkipInClusterMode(t, "the state lives in etcd, not in log and snapshot files")
	d := harness.Start(t, harness.Options{})
	ids := recoveryLeases(t, d, "/torn/a", "/torn/b")
	d.Kill(t)
	log := lastLog(t, d.StateDir)
	fi, err := os.Stat(log)
	if err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of a write: a frame declaring 200 bytes, 11 of
	// which made it.
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, 0x85, 0xa1, 'k', 3, 0xa1, 't', 0xcf, 0, 0})
	f.Close()

	d.Restart(t)
	want := fmt.Sprintf("offset=%d", fi.Size())
	if logs := d.Logs(); !strings.Contains(logs, "cut torn tail") || !strings.Contains(logs, log) || !strings.Contains(logs, want) {
		t.Fatalf("no warning naming %s and %s; logs:\n%s", log, want, logs)
	}
	active := activeLeases(t, d)
	for _, id := range ids {
		if !active[id] {
			t.Errorf("lease %s lost with the torn tail", id)
		}
	}
	if fi2, err := os.Stat(log); err != nil || fi2.Size() < fi.Size() {
		t.Errorf("log after restart: %v, %v; want it cut at %d and appended to", fi2, err, fi.Size())
	}
}

func TestRecoveryRefusesMidLogDamage(t *testing.T) {
	harness.SkipInClusterMode(t, "the state lives in etcd, not in log and snapshot files")
	d := harness.Start(t, harness.Options{})
	ids := recoveryLeases(t, d, "/mid/a", "/mid/b", "/mid/c")
	d.Stop(t)
	log := lastLog(t, d.StateDir)
	offs := recordStarts(t, log)
	if len(offs) != 4 {
		t.Fatalf("log holds %d records; want register + 3 grants", len(offs))
	}
	flipByte(t, log, offs[2]+20) // inside lease b's grant; c's follows intact

	out := klockdMustFail(t, d.StateDir)
	for _, want := range []string{log, fmt.Sprintf("offset %d", offs[2]), "--recover=truncate"} {
		if !strings.Contains(out, want) {
			t.Errorf("klockd's error does not mention %q:\n%s", want, out)
		}
	}

	d2 := harness.Start(t, harness.Options{StateDir: d.StateDir, Args: []string{"--recover=truncate"}})
	active := activeLeases(t, d2)
	if !active[ids[0]] || active[ids[1]] || active[ids[2]] {
		t.Fatalf("after --recover=truncate: active %v; want only %s (the lease before the damage)", active, ids[0])
	}
	if aside, _ := filepath.Glob(log + ".damaged-*"); len(aside) != 1 {
		t.Errorf("damaged log copies: %v; want one kept for inspection", aside)
	}
	if !strings.Contains(d2.Logs(), "recover=truncate") {
		t.Errorf("no warning about the truncation:\n%s", d2.Logs())
	}
	// The cut log is now consistent: a plain restart accepts it.
	d2.Stop(t)
	d2.Restart(t)
}

// quietLog discards the store's log lines in offline setup.
var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// openEngine opens dir with the store package, recovers its state into a
// journaling engine and starts the store's background work, as the daemon
// does at start.
func openEngine(tb testing.TB, dir string, opts store.Options) (*engine.Engine, *store.Store) {
	tb.Helper()
	st, err := store.Open(dir, opts)
	if err != nil {
		tb.Fatal(err)
	}
	eng := engine.New(engine.Config{Journal: true})
	if _, err := st.Recover(eng); err != nil {
		st.Close()
		tb.Fatal(err)
	}
	st.Start()
	return eng, st
}

// compactOffline makes a snapshot of dir's state with the store package,
// as the daemon does when its log grows.
func compactOffline(t testing.TB, dir string) {
	t.Helper()
	_, st := openEngine(t, dir, store.Options{Logger: quietLog})
	if err := st.Compact(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRecoveryRefusesSnapshotDamage(t *testing.T) {
	harness.SkipInClusterMode(t, "the state lives in etcd, not in log and snapshot files")
	d := harness.Start(t, harness.Options{})
	ids := recoveryLeases(t, d, "/snap/a", "/snap/b")
	d.Stop(t)
	compactOffline(t, d.StateDir)
	d.Restart(t)
	active := activeLeases(t, d)
	if !active[ids[0]] || !active[ids[1]] {
		t.Fatalf("leases after a restart from a snapshot: %v; want %v", active, ids)
	}
	d.Stop(t)

	snaps, _ := filepath.Glob(filepath.Join(d.StateDir, "snapshot.*"))
	if len(snaps) != 1 {
		t.Fatalf("snapshots: %v; want one", snaps)
	}
	flipByte(t, snaps[0], 40)
	out := klockdMustFail(t, d.StateDir)
	if !strings.Contains(out, snaps[0]) || !strings.Contains(out, "damaged") || !strings.Contains(out, "--recover=truncate") {
		t.Fatalf("klockd's error does not name the damaged snapshot %s:\n%s", snaps[0], out)
	}

	// The operator chooses to start anyway: nothing precedes the snapshot,
	// so the state is empty and the damaged files are kept aside.
	d2 := harness.Start(t, harness.Options{StateDir: d.StateDir, Args: []string{"--recover=truncate"}})
	if active := activeLeases(t, d2); len(active) != 0 {
		t.Fatalf("active after truncating a damaged snapshot: %v; want none", active)
	}
	if aside, _ := filepath.Glob(snaps[0] + ".damaged-*"); len(aside) != 1 {
		t.Errorf("damaged snapshot not kept aside: %v", aside)
	}
}

func TestSecondDaemonRefusesStateDir(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	out := klockdMustFail(t, d.StateDir)
	want := "pid " + strconv.Itoa(d.Cmd.Process.Pid)
	if !strings.Contains(out, d.StateDir) || !strings.Contains(out, want) {
		t.Fatalf("second klockd on %s: output does not name the directory and %q:\n%s", d.StateDir, want, out)
	}
}

// build100k fills a new state directory with 100,000 leases (held by 100
// agents) through the store package, as a daemon would have written them;
// with snapshot, compacted into a snapshot.
func build100k(b *testing.B, snapshot bool) string {
	b.Helper()
	dir := b.TempDir()
	eng, st := openEngine(b, dir, store.Options{Fsync: store.FsyncNever, CompactMinBytes: -1, Logger: quietLog})
	now := time.Now().UnixMilli()
	root := engine.Caller{}
	for a := range 100 {
		if _, err := eng.Register(now, root, fmt.Sprintf("agent-%d", a), int64(a+1), true); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 100_000 {
		res, err := eng.Acquire(now, root, engine.AcquireRequest{
			AgentID: fmt.Sprintf("agent-%d", i%100), SessionID: "s", TTL: 3_600_000, Idem: fmt.Sprintf("idem-%d", i),
			Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/src/pkg%d/file%d.go", i%500, i), Predicate: "MUTATES"}},
		})
		if err != nil || !res.Granted {
			b.Fatalf("acquire %d: %v", i, err)
		}
		if i%1000 == 999 {
			if err := st.Wait(st.Append(eng.Records())); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := st.Wait(st.Append(eng.Records())); err != nil {
		b.Fatal(err)
	}
	if snapshot {
		if err := st.Compact(); err != nil {
			b.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkRecovery100kLeases starts the real klockd on a state directory
// of 100,000 leases and measures until it answers hello (target < 1 s);
// recovery_ms is the recovery alone, as klockd logs it.
func BenchmarkRecovery100kLeases(b *testing.B) {
	for _, snap := range []bool{false, true} {
		name := "log"
		if snap {
			name = "snapshot"
		}
		b.Run(name, func(b *testing.B) {
			dir := build100k(b, snap)
			harness.Klockd(b) // build outside the timing
			var total time.Duration
			b.ResetTimer()
			for b.Loop() {
				d := harness.Start(b, harness.Options{StateDir: dir})
				b.StopTimer()
				total += recoveryTook(b, d.Logs())
				d.Stop(b)
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "recovery_ms")
		})
	}
}

// recoveryTook parses the duration from klockd's "state recovered" line.
func recoveryTook(b *testing.B, logs string) time.Duration {
	b.Helper()
	i := strings.LastIndex(logs, "state recovered")
	if i < 0 {
		b.Fatalf("no recovery line in:\n%s", logs)
	}
	line := logs[i:]
	if j := strings.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	k := strings.Index(line, "took=")
	if k < 0 {
		b.Fatalf("no took= in %q", line)
	}
	v := strings.Trim(strings.Fields(line[k+5:])[0], `"`)
	dur, err := time.ParseDuration(v)
	if err != nil {
		b.Fatalf("recovery line %q: %v", line, err)
	}
	return dur
}
