// Package metrics exposes klockd's counters, gauges and histograms in the
// Prometheus text format, through github.com/prometheus/client_golang.
//
// Nothing here runs on the request path but two histogram observations
// (atomic adds, no lock): the counters and gauges are the engine's own,
// read under the engine lock only when /metrics is scraped.
//
// The format is Prometheus' text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): "# HELP"
// and "# TYPE" lines, then samples; a histogram as cumulative _bucket
// series with an "le" label up to "+Inf", plus _sum and _count.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/klockd/klock/daemon/server"
	"github.com/klockd/klock/protocol"
)

// Source is what the counters and gauges are read from at scrape time:
// the server.
type Source interface {
	Counters() (server.Counters, error)
}

// Metrics is klockd's registry: its own metrics plus the Go and process
// collectors.
type Metrics struct {
	reg          *prometheus.Registry
	requests     map[string]prometheus.Observer // by op, for every known op
	otherOp      prometheus.Observer            // unknown ops, under one label
	journalWrite prometheus.Histogram
}

// Request durations are tens of microseconds to milliseconds; journal
// writes microseconds (page cache) to tens of milliseconds (fsync).
var (
	requestBuckets = prometheus.ExponentialBuckets(5e-6, 4, 9)  // 5µs .. 328ms
	journalBuckets = prometheus.ExponentialBuckets(10e-6, 4, 9) // 10µs .. 655ms
)

// New returns a registry with the histograms and the Go and process
// collectors; Serve adds the server's counters.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	reqs := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "klock_request_duration_seconds",
		Help:    "Time klockd spent serving a request, from decoding it to queueing its answer (not the wait of a parked acquire, nor the journal write), by op.",
		Buckets: requestBuckets,
	}, []string{"op"})
	m := &Metrics{reg: reg, requests: make(map[string]prometheus.Observer, len(protocol.Ops))}
	// Every known op has its series from the start; anything else is
	// "other", so a client cannot create series at will.
	for _, op := range protocol.Ops {
		m.requests[op] = reqs.WithLabelValues(op)
	}
	m.otherOp = reqs.WithLabelValues("other")
	m.journalWrite = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "klock_journal_write_seconds",
		Help:    "Time of one journal write round: the write(2) of a batch of records, and its fdatasync with --fsync=always (none in cluster mode, whose log is etcd's).",
		Buckets: journalBuckets,
	})
	reg.MustRegister(reqs, m.journalWrite)
	return m
}

// Serve adds the counters and gauges of src, read at each scrape.
func (m *Metrics) Serve(src Source) {
	m.reg.MustRegister(&engineCollector{src: src})
}

// ObserveRequest records how long serving one request of op took.
func (m *Metrics) ObserveRequest(op string, d time.Duration) {
	o := m.requests[op]
	if o == nil {
		o = m.otherOp
	}
	o.Observe(d.Seconds())
}

// ObserveJournalWrite records one journal write round.
func (m *Metrics) ObserveJournalWrite(d time.Duration) { m.journalWrite.Observe(d.Seconds()) }

// Handler serves the registry in the Prometheus formats (text by default).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry returns the registry, for tests and embedding.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// engineCollector reads the engine's counters at scrape time.
type engineCollector struct {
	src Source
}

var (
	descGrants      = prometheus.NewDesc("klock_grants_total", "Acquire requests granted (an acquire_many counts once).", nil, nil)
	descDenials     = prometheus.NewDesc("klock_denials_total", "Acquire requests denied, by reason (a parked request counts when it is answered).", []string{"reason"}, nil)
	descReleases    = prometheus.NewDesc("klock_releases_total", "Leases ended by release, end_session, or the exit of the process they were bound to.", nil, nil)
	descExpirations = prometheus.NewDesc("klock_expirations_total", "Leases removed because they expired.", nil, nil)
	descLeases      = prometheus.NewDesc("klock_leases", "Active leases.", nil, nil)
	descWaiters     = prometheus.NewDesc("klock_waiters", "Acquires parked in the daemon (wait_timeout).", nil, nil)
	descAgents      = prometheus.NewDesc("klock_agents", "Registered agents.", nil, nil)
	descConns       = prometheus.NewDesc("klock_connections", "Open client connections on the Unix socket.", nil, nil)
	descDegraded    = prometheus.NewDesc("klock_degraded", "1 while klockd refuses state changes because it cannot make them durable, else 0.", nil, nil)
)

func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGrants, descDenials, descReleases, descExpirations, descLeases, descWaiters, descAgents, descConns, descDegraded} {
		ch <- d
	}
}

func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.src.Counters()
	if err != nil {
		// The daemon is stopping after a failed change; report nothing
		// rather than zeros.
		ch <- prometheus.NewInvalidMetric(descLeases, err)
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(descGrants, s.Grants)
	counter(descDenials, s.Waits, string(protocol.ReasonWait))
	counter(descDenials, s.Dies, string(protocol.ReasonDie))
	counter(descDenials, s.Conflicts, string(protocol.ReasonConflict))
	counter(descDenials, s.Locked, string(protocol.ReasonResourceLocked))
	counter(descDenials, s.SessionExpired, string(protocol.ReasonSessionExpired))
	counter(descReleases, s.Releases+s.ExitReleases)
	counter(descExpirations, s.Expirations)
	gauge(descLeases, s.Leases)
	gauge(descWaiters, s.Waiters)
	gauge(descAgents, s.Agents)
	gauge(descConns, s.Connections)
	degraded := 0
	if s.Fault != nil {
		degraded = 1
	}
	gauge(descDegraded, degraded)
}
