package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Workload names.
const (
	Uncontended = "uncontended"
	Contended   = "contended"
	ManyLeases  = "many-leases"
)

// contendedResources is how many resources all workers share in the
// contended workload.
const contendedResources = 4

// Cell is the measurement of one back end, workload and worker count in one
// repetition.
type Cell struct {
	Backend     string  `json:"backend"`
	Workload    string  `json:"workload"`
	Workers     int     `json:"workers"`
	Rep         int     `json:"rep"`
	Seconds     float64 `json:"seconds"`
	Pairs       int64   `json:"pairs"`    // granted acquires followed by their release
	Attempts    int64   `json:"attempts"` // acquires, granted or denied
	PairsPerSec float64 `json:"pairs_per_sec"`
	P50us       float64 `json:"p50_us"` // latency of one acquire+release pair
	P99us       float64 `json:"p99_us"`
	P999us      float64 `json:"p999_us"`
	Die         int64   `json:"die"`
	Wait        int64   `json:"wait"`
	Busy        int64   `json:"busy"` // denied by a back end without Wait-Die
	Other       int64   `json:"other_denials"`
	RSSBytes    int64   `json:"rss_bytes,omitempty"`
	Skipped     string  `json:"skipped,omitempty"`
	// RTTP50us and RTTP99us are, in the handoff workload, the holder's
	// round trip for the release that hands the lease over.
	RTTP50us float64 `json:"rtt_p50_us,omitempty"`
	RTTP99us float64 `json:"rtt_p99_us,omitempty"`
	// In the stall workload the latencies are the probe's stats calls
	// (MaxUs the longest), Pairs the leases paged, PageSeconds one pass of
	// the pager over them and EndSeconds the end_session.
	MaxUs       float64 `json:"max_us,omitempty"`
	PageSeconds float64 `json:"page_seconds,omitempty"`
	EndSeconds  float64 `json:"end_seconds,omitempty"`
}

// setLatencies sets the cell's percentiles from lat, sorted.
func (c *Cell) setLatencies(lat []time.Duration) {
	c.P50us = micros(percentile(lat, 0.50))
	c.P99us = micros(percentile(lat, 0.99))
	c.P999us = micros(percentile(lat, 0.999))
}

// workerStats is what one worker counts; only its goroutine writes it.
type workerStats struct {
	lat                    []time.Duration
	attempts               int64
	die, wait, busy, other int64
	err                    error
}

// Phases of a cell, read by every worker at the top of each iteration.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// runCell drives w workers against b for warmup+d and measures the last d.
func runCell(ctx context.Context, b Backend, workload string, w int, d, warmup time.Duration) (Cell, error) {
	cell := Cell{Backend: b.Name(), Workload: workload, Workers: w}
	lockers, closer, err := b.Clients(ctx, w)
	if err != nil {
		return cell, err
	}
	defer closer.Close()

	stats := make([]workerStats, w)
	cell.Seconds = drive(ctx, w, d, warmup, func(i int, phase *atomic.Int32) error {
		st := &stats[i]
		st.lat = make([]time.Duration, 0, 1<<14)
		st.err = work(ctx, lockers[i], workload, i, phase, st)
		return st.err
	})

	var lat []time.Duration
	var errs []error
	for i := range stats {
		st := &stats[i]
		errs = append(errs, st.err)
		lat = append(lat, st.lat...)
		cell.Attempts += st.attempts
		cell.Die += st.die
		cell.Wait += st.wait
		cell.Busy += st.busy
		cell.Other += st.other
	}
	if err := errors.Join(errs...); err != nil {
		return cell, err
	}
	if err := ctx.Err(); err != nil {
		return cell, err
	}
	slices.Sort(lat)
	cell.Pairs = int64(len(lat))
	if cell.Seconds > 0 {
		cell.PairsPerSec = float64(cell.Pairs) / cell.Seconds
	}
	cell.setLatencies(lat)
	if rss, ok := b.RSS(); ok {
		cell.RSSBytes = rss
	}
	return cell, nil
}

// drive runs worker(i, phase) for i in 0..w-1, each on its own goroutine,
// through a warm-up and then d measured, and returns the seconds measured
// (0 when a worker failed first). A worker loops until phase is phaseStop,
// recording only while it is phaseMeasure; an error stops them all.
func drive(ctx context.Context, w int, d, warmup time.Duration, worker func(i int, phase *atomic.Int32) error) float64 {
	var phase atomic.Int32
	var wg sync.WaitGroup
	for i := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := worker(i, &phase); err != nil {
				phase.Store(phaseStop)
			}
		}()
	}
	pause(ctx, warmup)
	var seconds float64
	if phase.CompareAndSwap(phaseWarmup, phaseMeasure) {
		start := time.Now()
		pause(ctx, d)
		phase.CompareAndSwap(phaseMeasure, phaseStop)
		seconds = time.Since(start).Seconds()
	}
	phase.Store(phaseStop)
	wg.Wait()
	return seconds
}

// work is the one workload loop every back end runs. A granted acquire is
// released at once and its pair's latency recorded; a denial is counted and
// the worker moves on to the next resource.
func work(ctx context.Context, l Locker, workload string, i int, phase *atomic.Int32, st *workerStats) error {
	own := "/bench/" + workload + "/w" + strconv.Itoa(i)
	shared := make([]string, contendedResources)
	for k := range shared {
		shared[k] = "/bench/contended/r" + strconv.Itoa(k)
	}
	for n := i; ; n++ {
		p := phase.Load()
		if p == phaseStop {
			return nil
		}
		resource := own
		if workload == Contended {
			resource = shared[n%contendedResources]
		}
		start := time.Now()
		token, out, err := l.Acquire(ctx, resource)
		if err != nil {
			return err
		}
		if out == Granted {
			if err := l.Release(ctx, resource, token); err != nil {
				return err
			}
		}
		if p != phaseMeasure {
			continue
		}
		st.attempts++
		switch out {
		case Granted:
			st.lat = append(st.lat, time.Since(start))
		case DeniedDie:
			st.die++
		case DeniedWait:
			st.wait++
		case DeniedBusy:
			st.busy++
		default:
			st.other++
		}
	}
}

// percentile returns the q-quantile of sorted (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// pause waits for d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// label formats a cell for progress lines.
func (c Cell) label() string {
	return fmt.Sprintf("%s/%s/W=%d/rep %d", c.Backend, c.Workload, c.Workers, c.Rep)
}
