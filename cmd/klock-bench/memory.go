package main

import (
	"context"
	"time"
)

// The memory report: after the cells, for each back end holding the
// many-leases leases, its server's RSS per lease held, then how fast that
// memory comes back once they are all released (issue 18: half of it or
// better within 20 s).

// releaser is a back end whose held leases can all be released at once.
type releaser interface {
	// Release releases every lease Hold took and returns how long the
	// server took to answer.
	Release(ctx context.Context) (time.Duration, error)
}

// MemoryRow is one back end's memory report.
type MemoryRow struct {
	Backend string `json:"backend"`
	Leases  int    `json:"leases"`
	// RSSEmpty is the RSS of the back end's other instance (the one the
	// cells without held leases ran on), at the same moment.
	RSSEmpty int64 `json:"rss_empty_bytes"`
	RSSHeld  int64 `json:"rss_held_bytes"`
	// BytesPerLease is RSSHeld / Leases: the whole process, not only the
	// leases' share.
	BytesPerLease  float64 `json:"rss_bytes_per_lease"`
	ReleaseSeconds float64 `json:"release_seconds"` // the release call, sent to answered
	// RSSAfter is the RSS once RSSWait has passed since the release was
	// answered; Samples the RSS every second until then.
	RSSAfter   int64   `json:"rss_after_bytes"`
	RSSWait    string  `json:"rss_wait"`
	AfterRatio float64 `json:"rss_after_vs_held"`
	Samples    []int64 `json:"rss_samples_bytes"`
}

// measureRelease measures h (holding n leases; b is the same back end's
// other instance): RSS held, then releases everything and samples RSS
// every second for wait. A back end that cannot release returns
// errUnsupported.
func measureRelease(ctx context.Context, b, h Backend, n int, wait time.Duration) (MemoryRow, error) {
	m := MemoryRow{Backend: h.Name(), Leases: n, RSSWait: wait.String()}
	r, ok := h.(releaser)
	if !ok {
		return m, errUnsupported
	}
	held, ok := h.RSS()
	if !ok {
		return m, errUnsupported
	}
	m.RSSHeld = held
	if n > 0 {
		m.BytesPerLease = float64(held) / float64(n)
	}
	m.RSSEmpty, _ = b.RSS()
	d, err := r.Release(ctx)
	if err != nil {
		return m, err
	}
	m.ReleaseSeconds = d.Seconds()
	deadline := time.Now().Add(wait)
	for {
		step := min(time.Second, time.Until(deadline))
		if step <= 0 {
			break
		}
		pause(ctx, step)
		if err := ctx.Err(); err != nil {
			return m, err
		}
		rss, _ := h.RSS()
		m.Samples = append(m.Samples, rss)
	}
	m.RSSAfter, _ = h.RSS()
	m.AfterRatio = float64(m.RSSAfter) / float64(held)
	return m, nil
}
