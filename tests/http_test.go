package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// httpAddrRE finds the address klockd logs when it serves --http.
var httpAddrRE = regexp.MustCompile(`msg="serving metrics and the dashboard" http=(\S+)`)

// startHTTP starts klockd with --http on a free loopback port (port 0: the
// kernel picks it; klockd logs the address) and returns the daemon and
// the base URL.
func startHTTP(t *testing.T, extra ...string) (*harness.Daemon, string) {
	t.Helper()
	d := harness.Start(t, harness.Options{Args: append([]string{"--http", "127.0.0.1:0"}, extra...)})
	var addr string
	waitFor(t, "klockd to log its http address", func() bool {
		m := httpAddrRE.FindStringSubmatch(d.Logs())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	return d, "http://" + addr
}

// scrape fetches /metrics and parses it with the Prometheus text parser.
func scrape(t *testing.T, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4"),
		"Content-Type %q: the text format is version 0.0.4", resp.Header.Get("Content-Type"))
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// value returns the value of the family's sample whose labels include
// want (name=value pairs), for counters, gauges and histograms (count).
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	f := fams[name]
	require.NotNil(t, f, "no metric %s", name)
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no sample of %s with %v", name, want)
	return 0
}

// TestMetricsMoveWithRequests parses /metrics with the Prometheus text
// parser before and after real requests: the counters, gauges and
// histograms issue 16 names are there, of the right type, and move.
func TestMetricsMoveWithRequests(t *testing.T) {
	d, url := startHTTP(t)
	hc := &http.Client{Timeout: 10 * time.Second}
	before := scrape(t, hc, url)
	types := map[string]dto.MetricType{
		"klock_grants_total": dto.MetricType_COUNTER, "klock_denials_total": dto.MetricType_COUNTER,
		"klock_releases_total": dto.MetricType_COUNTER, "klock_expirations_total": dto.MetricType_COUNTER,
		"klock_leases": dto.MetricType_GAUGE, "klock_waiters": dto.MetricType_GAUGE, "klock_agents": dto.MetricType_GAUGE,
		"klock_connections":              dto.MetricType_GAUGE,
		"klock_degraded":                 dto.MetricType_GAUGE,
		"klock_request_duration_seconds": dto.MetricType_HISTOGRAM, "klock_journal_write_seconds": dto.MetricType_HISTOGRAM,
		"go_goroutines": dto.MetricType_GAUGE, "process_resident_memory_bytes": dto.MetricType_GAUGE,
	}
	for name, typ := range types {
		require.Contains(t, before, name)
		require.Equal(t, typ, before[name].GetType(), name)
	}

	r := d.Raw(t)
	for i, ag := range []string{"old", "young"} {
		mustOK(t, "register", r.Call(uint64(i+1), protocol.OpRegisterAgent, args(protocol.ArgAgentID, ag, protocol.ArgPriority, i+1)), nil)
	}
	var g protocol.Grant
	mustOK(t, "acquire", r.Call(3, protocol.OpAcquire, acquireArgs("young", "s", "/m/x", "MUTATES", 60_000)), &g)
	mustOK(t, "acquire", r.Call(4, protocol.OpAcquire, acquireArgs("young", "s", "/m/y", "MUTATES", 60_000)), nil)
	mustOK(t, "die", r.Call(5, protocol.OpAcquire, acquireArgs("young", "s2", "/m/x", "MUTATES", 60_000)), nil) // CONFLICT
	mustOK(t, "wait", r.Call(6, protocol.OpAcquire, acquireArgs("old", "s", "/m/x", "MUTATES", 60_000)), nil)
	mustOK(t, "release", r.Call(7, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), nil)
	mustOK(t, "short", r.Call(8, protocol.OpAcquire, acquireArgs("old", "s", "/m/short", "MUTATES", 20)), nil)
	waitFor(t, "the short lease to expire", func() bool {
		var st protocol.StatsResult
		mustOK(t, "stats", r.Call(9, protocol.OpStats, nil), &st)
		return st.Expirations == 1
	})

	after := scrape(t, hc, url)
	require.Equal(t, 3.0, value(t, after, "klock_grants_total")-value(t, before, "klock_grants_total"))
	require.Equal(t, 1.0, value(t, after, "klock_denials_total", "reason", "WAIT"))
	require.Equal(t, 1.0, value(t, after, "klock_denials_total", "reason", "CONFLICT"))
	require.Equal(t, 0.0, value(t, after, "klock_denials_total", "reason", "DIE"))
	require.Equal(t, 1.0, value(t, after, "klock_releases_total"))
	require.Equal(t, 1.0, value(t, after, "klock_expirations_total"))
	require.Equal(t, 1.0, value(t, after, "klock_leases"), "/m/y is the one lease left")
	require.Equal(t, 2.0, value(t, after, "klock_agents"))
	require.GreaterOrEqual(t, value(t, after, "klock_connections"), 1.0)
	require.Equal(t, 0.0, value(t, after, "klock_degraded"))
	require.Equal(t, 5.0, value(t, after, "klock_request_duration_seconds", "op", "acquire")-value(t, before, "klock_request_duration_seconds", "op", "acquire"))
	require.Equal(t, 1.0, value(t, after, "klock_request_duration_seconds", "op", "release"))
	if harness.ClusterMode() {
		// The log is etcd's: no local journal writes anything.
		require.Equal(t, 0.0, value(t, after, "klock_journal_write_seconds"), "a cluster-mode klockd has no journal")
	} else {
		require.Greater(t, value(t, after, "klock_journal_write_seconds"), value(t, before, "klock_journal_write_seconds"),
			"the journal wrote records for these requests")
	}
	// An unknown op is counted under "other", not under its own name.
	expectCode(t, "unknown op", r.Call(10, "no_such_op", nil), protocol.CodeUnknownOp)
	final := scrape(t, hc, url)
	require.Equal(t, 1.0, value(t, final, "klock_request_duration_seconds", "op", "other"))
	for _, m := range final["klock_request_duration_seconds"].Metric {
		for _, l := range m.Label {
			require.NotEqual(t, "no_such_op", l.GetValue())
		}
	}
}

// TestMetricsDegraded: klock_degraded is 1 while a full disk makes klockd
// refuse changes, and 0 again once it has healed.
func TestMetricsDegraded(t *testing.T) {
	harness.SkipInClusterMode(t, "the state lives in etcd; a full disk does not stop a cluster-mode klockd from changing it (etcd quorum loss is TestClusterEtcdQuorum)")
	mnt := mountTmpfs(t, "2m")
	d, url := startHTTP(t, "--state-dir", filepath.Join(mnt, "state"))
	hc := &http.Client{Timeout: 10 * time.Second}
	require.Equal(t, 0.0, value(t, scrape(t, hc, url), "klock_degraded"))
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a")), nil)
	fill := filepath.Join(mnt, "fill")
	exec.Command("dd", "if=/dev/zero", "of="+fill, "bs=64k").Run()
	var resp *protocol.Response
	for i := 0; i < 5000; i++ {
		if resp = r.Call(uint64(10+i), protocol.OpAcquire, acquireArgs("a", "s", fmt.Sprintf("/d%d", i), "MUTATES", 60_000)); !resp.OK {
			break
		}
	}
	expectCode(t, "acquire on a full disk", resp, protocol.CodeUnavailable)
	require.Equal(t, 1.0, value(t, scrape(t, hc, url), "klock_degraded"))
	require.NoError(t, os.Remove(fill))
	waitFor(t, "klock_degraded to go back to 0", func() bool { return value(t, scrape(t, hc, url), "klock_degraded") == 0 })
}

// TestHTTPRefusesNonLoopback: --http on anything but loopback or a Unix
// socket stops klockd with a clear error; a Unix socket serves /metrics.
func TestHTTPRefusesNonLoopback(t *testing.T) {
	klockd := harness.Klockd(t)
	for _, addr := range []string{"0.0.0.0:8080", ":8080", "192.0.2.1:80", "[::]:80", "localhost:8080", "example.com:80", "nonsense"} {
		cmd := exec.Command(klockd, "run", "--state-dir", "", "--socket", filepath.Join(shortTempDir(t), "k.sock"), "--http", addr)
		cmd.Env = testEnv()
		res := runCmd(t, cmd)
		require.Equal(t, 2, res.code, "--http %s: %s", addr, res.stderr)
		require.Contains(t, res.stderr, "--http")
		require.Contains(t, res.stderr, addr)
		require.NotContains(t, res.stderr, "klockd started")
	}
	sock := filepath.Join(shortTempDir(t), "http.sock")
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--http", sock}})
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	fams := scrape(t, hc, "http://klockd")
	require.Contains(t, fams, "klock_grants_total")
	resp, err := hc.Get("http://klockd/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "<title>klock")
	resp, err = hc.Post("http://klockd/api/state", "application/json", strings.NewReader("{}"))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "the HTTP side is read-only")
	_ = d
}

// shortTempDir is a temporary directory with a short path (Unix socket
// paths are limited to 108 bytes), removed when the test ends.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "klkh")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestEventsStreamIsServerSentEvents reads /events as a browser would and
// checks the text/event-stream framing of a grant.
func TestEventsStreamIsServerSentEvents(t *testing.T) {
	d, url := startHTTP(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/events?prefix=FILE:/sse/", nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	var got strings.Builder
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf) // the opening retry field and comment
	require.NoError(t, err)
	got.Write(buf[:n])
	require.Contains(t, got.String(), "retry: ")

	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a")), nil)
	mustOK(t, "other", r.Call(2, protocol.OpAcquire, acquireArgs("a", "s", "/elsewhere", "MUTATES", 60_000)), nil)
	var g protocol.Grant
	mustOK(t, "acquire", r.Call(3, protocol.OpAcquire, acquireArgs("a", "s", "/sse/x", "MUTATES", 60_000)), &g)
	// Read until a whole grant event (its blank line included) is in.
	complete := regexp.MustCompile(`(?s)event: grant\n.*?\n\n`)
	for !complete.MatchString(got.String()) {
		n, err := resp.Body.Read(buf)
		require.NoError(t, err)
		got.Write(buf[:n])
	}
	s := got.String()
	i := strings.Index(s, "event: grant\n")
	require.GreaterOrEqual(t, i, 0, s)
	block := s[i : i+strings.Index(s[i:], "\n\n")]
	lines := strings.Split(block, "\n")
	require.Len(t, lines, 2, "an event is one event line and one data line: %q", block)
	require.True(t, strings.HasPrefix(lines[1], "data: {"), lines[1])
	require.Contains(t, lines[1], fmt.Sprintf(`"lease_id":"%s"`, g.LeaseID))
	require.Contains(t, lines[1], `"resource":"FILE:/sse/x"`)
	require.NotContains(t, s, "/elsewhere", "the prefix filter applies to /events")
}
