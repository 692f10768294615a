package tests

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestAnswersAreValidUTF8: an unknown op whose name is not UTF-8 (or is cut
// inside a character when quoted) is echoed as valid UTF-8, so that strict
// msgpack decoders (Python's raw=False) can read the answer.
func TestAnswersAreValidUTF8(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	for i, op := range []string{"\xff\xfe\xfd", "acquire\xc3", strings.Repeat("x", 63) + "€€"} {
		r.WriteBody(mp(t, map[string]any{"id": i + 1, "op": op}))
		resp := r.Recv()
		expectCode(t, "unknown op", resp, protocol.CodeUnknownOp)
		if !utf8.ValidString(resp.Error.Message) {
			t.Errorf("op %q: message %q is not valid UTF-8", op, resp.Error.Message)
		}
	}
}

// TestOutOfDescriptorsWaitsAndRecovers: with its descriptors used up
// (EMFILE), klockd keeps serving the connections it has, logs one WARN
// line (at most one a minute, not one per retry), and accepts again once
// connections close.
func TestOutOfDescriptorsWaitsAndRecovers(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit(1) is not installed (util-linux)")
	}
	d := harness.Start(t, harness.Options{StateDir: "none"})
	served := d.Raw(t)
	pid := d.Cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	limit := len(fds) + 4
	if out, err := exec.Command(prlimit, "--pid", strconv.Itoa(pid), fmt.Sprintf("--nofile=%d:%d", limit, limit)).CombinedOutput(); err != nil {
		t.Fatalf("prlimit: %v\n%s", err, out)
	}
	var extra []*harness.Raw
	for range 12 {
		extra = append(extra, d.Raw(t))
	}
	waitFor(t, "klockd to run out of descriptors", func() bool {
		return strings.Contains(d.Logs(), "accepting connections fails")
	})
	mustOK(t, "hello on a connection accepted before", served.Call(1, protocol.OpHello, nil), nil)
	for _, r := range extra {
		r.Conn.Close()
	}
	mustOK(t, "hello on a new connection", d.Raw(t).Call(1, protocol.OpHello, nil), nil)
	if n := strings.Count(d.Logs(), "accepting connections fails"); n != 1 {
		t.Errorf("%d WARN lines for running out of descriptors; want 1:\n%s", n, d.Logs())
	}
}
