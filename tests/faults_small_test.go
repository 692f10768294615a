package tests

import (
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
