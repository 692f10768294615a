package tests

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestEventsCutsOffASlowBrowser: a browser that stops reading /events is
// cut off like a slow watcher (issue 16), while a client on the Unix
// socket is served normally all along: once it reads again it gets the
// events that were buffered, one final "overflow" event, and the end of
// the response. --http listens on a Unix socket here so that what the
// stalled reader leaves unread fills a kernel buffer of known size
// (net.core.wmem_default, about 200 KiB) instead of TCP's autotuned ones.
func TestEventsCutsOffASlowBrowser(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "http.sock")
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--http", sock, "--watch-buffer", "8"}})
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://klockd/events", nil)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "retry: "), "the stream opens with its retry field, got %q", line)
	// From here on the browser reads nothing until the pairs are done.

	c := d.Raw(t)
	mustOK(t, "register", c.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "busy")), nil)
	const pairs = 2000 // 4000 events of ~250 bytes: several times what the socket buffers hold
	start := time.Now()
	for i := uint64(0); i < pairs; i++ {
		var g protocol.Grant
		mustOK(t, "acquire", c.Call(10+2*i, protocol.OpAcquire, acquireArgs("busy", "s", "/slow/x", "MUTATES", 60_000)), &g)
		mustOK(t, "release", c.Call(11+2*i, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), nil)
	}
	stalled := time.Since(start)
	t.Logf("%d acquire+release pairs served in %s with a stalled browser", pairs, stalled)

	rest, err := io.ReadAll(br)
	text := line + string(rest)
	n := strings.Count(text, "event: grant\n") + strings.Count(text, "event: release\n")
	t.Logf("the stalled browser got %d of %d events (%v)", n, 2*pairs, err)
	require.Less(t, n, 2*pairs, "every event was delivered: the browser was never cut off")
	if stalled >= 10*time.Second {
		// klockd's write deadline (server.DefaultWriteTimeout) may have cut
		// the stream before the overflow event could be written, even in
		// the middle of a chunk (an unexpected EOF): cut off either way.
		return
	}
	require.NoError(t, err, "the response ends cleanly")
	require.True(t, strings.HasSuffix(text, "event: overflow\ndata: {}\n\n"),
		"the stream ends with one overflow event; its last 300 bytes: %q", text[max(0, len(text)-300):])
	require.Equal(t, 1, strings.Count(text, "event: overflow\n"))
}
