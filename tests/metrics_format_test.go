package tests

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/protocol"
)

// sampleRE is a sample line of the text format: a metric name, optional
// labels in braces, a value (no timestamps: klockd sends none).
var (
	sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	labelRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// TestMetricsTextFormat reads /metrics as raw text and checks it against
// the text format as Prometheus documents it, beyond what expfmt's parser
// (TestMetricsMoveWithRequests) already enforces:
//   - https://prometheus.io/docs/instrumenting/exposition_formats/ ("Text
//     format details"): Content-Type text/plain; version=0.0.4, UTF-8,
//     lines separated by \n and the last line ending with one; "# HELP"
//     and "# TYPE" lines, the TYPE line before the family's first sample;
//     a histogram as x_bucket{le="..."} samples, one with le="+Inf",
//     then x_sum and x_count.
//   - https://prometheus.io/docs/concepts/metric_types/ ("Histogram"):
//     buckets are cumulative, and x_count is identical to the +Inf bucket.
//
// Every family klock exposes (klock_*) has exactly one HELP and one TYPE
// line, of the type issue 16 names, and its samples follow them together.
func TestMetricsTextFormat(t *testing.T) {
	d, url := startHTTP(t)
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a")), nil)
	for i := uint64(0); i < 20; i++ {
		var g protocol.Grant
		mustOK(t, "acquire", r.Call(10+2*i, protocol.OpAcquire, acquireArgs("a", "s", "/f/x", "MUTATES", 60_000)), &g)
		mustOK(t, "release", r.Call(11+2*i, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), nil)
	}

	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(url + "/metrics")
	require.NoError(t, err)
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	ct := resp.Header.Get("Content-Type")
	require.True(t, strings.HasPrefix(ct, "text/plain; version=0.0.4"), "Content-Type %q", ct)
	require.Contains(t, ct, "charset=utf-8")
	text := string(raw)
	require.True(t, strings.HasSuffix(text, "\n"), "the last line must end with a line feed")
	require.NotContains(t, text, "\r", "lines are separated by \\n only")

	wantType := map[string]string{
		"klock_grants_total": "counter", "klock_denials_total": "counter",
		"klock_releases_total": "counter", "klock_expirations_total": "counter",
		"klock_leases": "gauge", "klock_waiters": "gauge", "klock_agents": "gauge",
		"klock_connections": "gauge", "klock_degraded": "gauge",
		"klock_request_duration_seconds": "histogram", "klock_journal_write_seconds": "histogram",
	}
	help, typ := map[string]int{}, map[string]string{}
	done := map[string]bool{} // families whose samples have ended
	cur := ""                 // the family whose samples come now
	type series struct {
		buckets    []float64 // cumulative counts, in the order sent
		les        []string
		sum, count float64
		hasSum     bool
		hasCount   bool
	}
	hist := map[string]map[string]*series{} // family -> labels without le -> series
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if f, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, _, _ := strings.Cut(f, " ")
			help[name]++
			continue
		}
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, kind, _ := strings.Cut(f, " ")
			require.Empty(t, typ[name], "two TYPE lines for %s", name)
			require.False(t, done[name], "the TYPE line of %s after its samples", name)
			typ[name] = kind
			continue
		}
		m := sampleRE.FindStringSubmatch(line)
		require.NotNil(t, m, "not a sample line: %q", line)
		name, labels, value := m[1], m[2], m[3]
		family := name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && typ[base] == "histogram" {
				family = base
			}
		}
		if !strings.HasPrefix(family, "klock_") {
			continue
		}
		require.NotEmpty(t, typ[family], "a sample of %s before its TYPE line", family)
		if family != cur {
			require.False(t, done[family], "the samples of %s are not together", family)
			if cur != "" {
				done[cur] = true
			}
			cur = family
		}
		v, err := strconv.ParseFloat(value, 64)
		require.NoError(t, err, line)
		if typ[family] != "histogram" {
			continue
		}
		var le string
		var rest []string
		for _, l := range labelRE.FindAllStringSubmatch(labels, -1) {
			if l[1] == "le" {
				le = l[2]
			} else {
				rest = append(rest, l[0])
			}
		}
		key := strings.Join(rest, ",")
		if hist[family] == nil {
			hist[family] = map[string]*series{}
		}
		s := hist[family][key]
		if s == nil {
			s = &series{}
			hist[family][key] = s
		}
		switch strings.TrimPrefix(name, family) {
		case "_bucket":
			require.NotEmpty(t, le, "a bucket without le: %q", line)
			require.False(t, s.hasSum || s.hasCount, "a bucket after _sum or _count: %q", line)
			s.buckets, s.les = append(s.buckets, v), append(s.les, le)
		case "_sum":
			s.sum, s.hasSum = v, true
		case "_count":
			s.count, s.hasCount = v, true
		default:
			t.Fatalf("a sample of histogram %s that is not _bucket, _sum or _count: %q", family, line)
		}
	}

	for name, kind := range wantType {
		require.Equal(t, 1, help[name], "HELP lines of %s", name)
		require.Equal(t, kind, typ[name], "TYPE of %s", name)
	}
	for name := range typ {
		if strings.HasPrefix(name, "klock_") {
			require.Contains(t, wantType, name, "a klock_ family issue 16 does not name")
		}
	}
	for name, kind := range typ {
		if kind == "counter" {
			require.True(t, strings.HasSuffix(name, "_total"), "counter %s must end in _total", name)
		}
	}
	for _, family := range []string{"klock_request_duration_seconds", "klock_journal_write_seconds"} {
		require.NotEmpty(t, hist[family], "no series of %s", family)
		for key, s := range hist[family] {
			require.True(t, s.hasSum && s.hasCount, "%s{%s}: _sum and _count", family, key)
			require.NotEmpty(t, s.buckets, "%s{%s}: no buckets", family, key)
			require.Equal(t, "+Inf", s.les[len(s.les)-1], "%s{%s}: the last bucket is le=\"+Inf\"", family, key)
			for i := 1; i < len(s.buckets); i++ {
				require.LessOrEqual(t, s.buckets[i-1], s.buckets[i], "%s{%s}: buckets are cumulative", family, key)
				lo, _ := strconv.ParseFloat(s.les[i-1], 64)
				hi, _ := strconv.ParseFloat(s.les[i], 64)
				require.Less(t, lo, hi, "%s{%s}: bucket bounds increase", family, key)
			}
			require.Equal(t, s.count, s.buckets[len(s.buckets)-1], "%s{%s}: _count equals the +Inf bucket", family, key)
			require.GreaterOrEqual(t, s.sum, 0.0)
		}
	}
	acq := hist["klock_request_duration_seconds"][`op="acquire"`]
	require.NotNil(t, acq, "no series for op=\"acquire\"")
	require.Equal(t, 20.0, acq.count, "the 20 acquires were timed")
}
