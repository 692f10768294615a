package tests

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestClientLimitsSayWhatTheDaemonSays: an argument over its limit is
// refused by the Go client before sending, with the message klockd gives
// for the same argument (issue 19: a 1 MB path reported the frame limit).
func TestClientLimitsSayWhatTheDaemonSays(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	r := d.Raw(t)
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name           string
		agent, session string
		path           string
	}{
		{"a 1 MB path", "a", "s", "/" + strings.Repeat("p", 1<<20-1)},
		{"a path one byte over", "a", "s", "/" + strings.Repeat("p", protocol.MaxPathLen)},
		{"a long agent id", strings.Repeat("a", protocol.MaxIDLen+1), "s", "/x"},
		{"a control character", "a", "s\x1b[2J", "/x"},
		{"a C1 control character", "a", "s", "/x\u009b"},
		{"a path 65 levels deep", "a", "s", strings.Repeat("/d", protocol.MaxPathDepth+1)},
	} {
		before, err := c.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.AcquireLease(ctx, tc.agent, tc.session, "SYMBOL", tc.path, "MUTATES", time.Minute)
		var ce *clientlib.Error
		if !errors.As(err, &ce) || ce.Code != protocol.CodeInvalidArgument {
			t.Errorf("%s: clientlib = %v; want INVALID_ARGUMENT", tc.name, err)
			continue
		}
		// Refused before sending: klockd answered nothing between the two
		// stats calls but the first of them.
		if after, err := c.Stats(ctx); err != nil || after.Ops != before.Ops+1 {
			t.Errorf("%s: klockd answered %d requests while clientlib refused it (%v); want it refused in the client", tc.name, after.Ops-before.Ops-1, err)
		}
		if tc.name == "a 1 MB path" {
			continue // the daemon cannot read it: the frame is over max_frame (BAD_FRAME), which is the point
		}
		resp := r.Call(uint64(i+1), protocol.OpAcquire, acquireArgs(tc.agent, tc.session, tc.path, "MUTATES", 60000))
		if resp.OK || resp.Error == nil {
			t.Errorf("%s: klockd accepted it", tc.name)
			continue
		}
		if resp.Error.Message != ce.Message {
			t.Errorf("%s: clientlib says %q; klockd says %q; want the same", tc.name, ce.Message, resp.Error.Message)
		}
	}
}
