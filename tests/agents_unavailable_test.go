package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/tests/harness"
)

// TestAgentsWhenKlockdCannotSave runs klockd with its state on a tmpfs that
// the test fills, so that klockd refuses state changes with UNAVAILABLE:
// the hook lets the edit through with its warning (or denies it with
// --fail-closed), and the MCP server answers a tool error that says klockd
// cannot save changes.
func TestAgentsWhenKlockdCannotSave(t *testing.T) {
	harness.SkipInClusterMode(t, "the state lives in etcd, not on the local disk (etcd quorum loss is TestClusterEtcdQuorum)")
	mnt := mountTmpfs(t, "2m")
	d := harness.Start(t, harness.Options{StateDir: filepath.Join(mnt, "state")})
	m := startMCP(t, d.Socket, "unlucky")
	exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(mnt, "fill"), "bs=64k").Run()
	// A little room may be left in the log's last page: change state until
	// klockd says it cannot (from then on it refuses every change).
	// The filler asks once per change (no UNAVAILABLE retry): its first
	// refusal is what it waits for.
	c, err := clientlib.Dial(testCtx(t), clientlib.Options{Socket: d.Socket, UnavailableWait: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Register(testCtx(t), "filler", nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		_, err := c.AcquireLease(testCtx(t), "filler", "s", "FILE", fmt.Sprintf("/fill/%d", i), "MUTATES", time.Minute)
		if err != nil {
			if !strings.Contains(err.Error(), "UNAVAILABLE") {
				t.Fatalf("acquire on a full disk: %v; want UNAVAILABLE", err)
			}
			break
		}
		if i == 5000 {
			t.Fatal("klockd still accepts changes on a full disk")
		}
	}

	dir := t.TempDir()
	input := preToolUse(t, "sess-full", dir, "Write", map[string]any{"file_path": filepath.Join(dir, "a"), "content": ""})
	dec := hookDecides(t, "Write with klockd's disk full", runHook(t, d.Socket, input))
	if dec.HookSpecificOutput != nil || !strings.Contains(dec.SystemMessage, "allowed without a lease") ||
		!strings.Contains(dec.SystemMessage, "UNAVAILABLE") {
		t.Fatalf("decision with klockd's disk full = %+v; want the edit allowed with a warning naming UNAVAILABLE", dec)
	}
	dec = hookDecides(t, "Write with klockd's disk full, --fail-closed", runHook(t, d.Socket, input, "--fail-closed"))
	if h := dec.HookSpecificOutput; h == nil || h.PermissionDecision != "deny" || !strings.Contains(h.PermissionDecisionReason, "UNAVAILABLE") {
		t.Fatalf("--fail-closed decision with klockd's disk full = %+v; want a deny naming UNAVAILABLE", dec)
	}

	r := m.call(t, "klock_acquire", map[string]any{"paths": []string{filepath.Join(dir, "b")}})
	if text := resultText(r); !r.IsError || !strings.Contains(text, "cannot save changes") || !strings.Contains(text, "UNAVAILABLE") {
		t.Fatalf("klock_acquire with klockd's disk full = error %v %q; want a tool error saying klockd cannot save changes", r.IsError, text)
	}
}
