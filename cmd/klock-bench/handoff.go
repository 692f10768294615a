package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/klockd/klock/clientlib"
)

// Handoff is the workload that measures how fast a parked waiter gets a
// lease once its holder lets go: from the holder sending its release to
// the waiter's grant arriving at the waiter's client, next to the holder's
// own round trip for that release. Only back ends with waiters in the
// server (klock) run it.
const Handoff = "handoff"

// handoffWaitTimeout is how long a waiter stays parked at most; a hand-off
// takes microseconds, so reaching it means something is wrong.
const handoffWaitTimeout = 10 * time.Second

// handoffBackend is a back end that can park a waiter in its server.
type handoffBackend interface {
	// HandoffPairs returns w pairs, each a holder and a waiter on their own
	// connections (separate agent processes), and a closer for them.
	HandoffPairs(ctx context.Context, w int) ([]HandoffPair, io.Closer, error)
}

// HandoffPair is one holder and one waiter sharing a resource. A pair is
// used by a single goroutine.
type HandoffPair interface {
	// Handoff runs one hand-off: the holder takes the resource, the waiter
	// asks for it and is parked, the holder releases it. It returns the
	// time from the release being sent to the waiter's grant arriving, and
	// the holder's round trip for the release.
	Handoff(ctx context.Context) (handoff, rtt time.Duration, err error)
}

// runHandoffCell drives w pairs against b for warmup+d and measures the
// last d. The cell's pairs are hand-offs; P50us.. are the hand-off
// latency and RTTP50us.. the holders' release round trips.
func runHandoffCell(ctx context.Context, b Backend, w int, d, warmup time.Duration) (Cell, error) {
	cell := Cell{Backend: b.Name(), Workload: Handoff, Workers: w}
	hb, ok := b.(handoffBackend)
	if !ok {
		return cell, errUnsupported
	}
	pairs, closer, err := hb.HandoffPairs(ctx, w)
	if err != nil {
		return cell, err
	}
	defer closer.Close()

	type pairStats struct {
		handoff, rtt []time.Duration
		err          error
	}
	stats := make([]pairStats, w)
	cell.Seconds = drive(ctx, w, d, warmup, func(i int, phase *atomic.Int32) error {
		st := &stats[i]
		for {
			p := phase.Load()
			if p == phaseStop {
				return nil
			}
			h, rtt, err := pairs[i].Handoff(ctx)
			if err != nil {
				st.err = err
				return err
			}
			if p == phaseMeasure {
				st.handoff = append(st.handoff, h)
				st.rtt = append(st.rtt, rtt)
			}
		}
	})

	var handoff, rtt []time.Duration
	var errs []error
	for i := range stats {
		errs = append(errs, stats[i].err)
		handoff = append(handoff, stats[i].handoff...)
		rtt = append(rtt, stats[i].rtt...)
	}
	if err := errors.Join(errs...); err != nil {
		return cell, err
	}
	if err := ctx.Err(); err != nil {
		return cell, err
	}
	slices.Sort(handoff)
	slices.Sort(rtt)
	cell.Pairs = int64(len(handoff))
	cell.Attempts = cell.Pairs
	if cell.Seconds > 0 {
		cell.PairsPerSec = float64(cell.Pairs) / cell.Seconds
	}
	cell.setLatencies(handoff)
	cell.RTTP50us = micros(percentile(rtt, 0.50))
	cell.RTTP99us = micros(percentile(rtt, 0.99))
	if rss, ok := b.RSS(); ok {
		cell.RSSBytes = rss
	}
	return cell, nil
}

// HandoffPairs gives each pair two agents, the waiter senior to the holder
// (Wait-Die lets only an older agent wait), each on its own connection.
func (b *klockBackend) HandoffPairs(ctx context.Context, w int) ([]HandoffPair, io.Closer, error) {
	var cs closers
	pairs := make([]HandoffPair, w)
	for i := range pairs {
		p := &klockPair{
			resource: "/bench/handoff/r" + strconv.Itoa(i),
			holderID: "handoff-holder-" + strconv.Itoa(i),
			waiterID: "handoff-waiter-" + strconv.Itoa(i),
		}
		var err error
		if p.holder, err = b.dial(ctx, i); err == nil {
			cs = append(cs, p.holder)
			if p.waiter, err = b.dial(ctx, i+1); err == nil { // another node, in cluster mode
				cs = append(cs, p.waiter)
			}
		}
		if err == nil {
			err = p.waiter.RegisterAgent(ctx, p.waiterID, int64(1000+i))
		}
		if err == nil {
			err = p.holder.RegisterAgent(ctx, p.holderID, int64(1_000_000+i))
		}
		if err != nil {
			cs.Close()
			return nil, nil, fmt.Errorf("klock-bench: handoff pair %d: %w", i, err)
		}
		pairs[i] = p
	}
	return pairs, cs, nil
}

// klockPair is one hand-off pair on klockd.
type klockPair struct {
	holder, waiter     *clientlib.Client
	holderID, waiterID string
	resource           string
}

// waited is what the waiter's blocking acquire returned, and when.
type waited struct {
	at  time.Time
	res *clientlib.AcquireResult
	err error
}

func (p *klockPair) Handoff(ctx context.Context) (time.Duration, time.Duration, error) {
	held, err := p.holder.AcquireLease(ctx, p.holderID, "bench", "FILE", p.resource, "MUTATES", klockTTL)
	if err != nil {
		return 0, 0, fmt.Errorf("klock-bench: handoff: holder acquire: %w", err)
	}
	if !held.Success {
		return 0, 0, fmt.Errorf("klock-bench: handoff: holder denied: %s %s", held.Reason, held.Message)
	}
	got := make(chan waited, 1)
	go func() {
		res, err := p.waiter.AcquireOnce(ctx, clientlib.AcquireRequest{
			AgentID: p.waiterID, SessionID: "bench", TTL: klockTTL, WaitTimeout: handoffWaitTimeout,
			Intents: []clientlib.Intent{{ResourceType: "FILE", ResourcePath: p.resource, Predicate: "MUTATES"}},
		})
		got <- waited{at: time.Now(), res: res, err: err}
	}()
	// Release only once the waiter is parked: its acquire is in the
	// resource's queue. These round trips are not measured.
	for {
		ex, err := p.holder.Explain(ctx, clientlib.ExplainRequest{ResourceType: "FILE", ResourcePath: p.resource})
		if err != nil {
			return 0, 0, fmt.Errorf("klock-bench: handoff: explain: %w", err)
		}
		if len(ex.Queue) > 0 {
			break
		}
		select {
		case w := <-got: // answered without parking: a bug in the set-up
			return 0, 0, fmt.Errorf("klock-bench: handoff: waiter answered before the release: %+v %v", w.res, w.err)
		default:
		}
	}
	start := time.Now()
	ok, err := p.holder.ReleaseLease(ctx, held.LeaseID)
	rtt := time.Since(start)
	if err != nil || !ok {
		return 0, 0, fmt.Errorf("klock-bench: handoff: release: %v (released %v)", err, ok)
	}
	w := <-got
	if w.err != nil {
		return 0, 0, fmt.Errorf("klock-bench: handoff: waiter: %w", w.err)
	}
	if !w.res.Success {
		return 0, 0, fmt.Errorf("klock-bench: handoff: waiter denied: %s %s", w.res.Reason, w.res.Message)
	}
	handoff := w.at.Sub(start)
	if ok, err := p.waiter.ReleaseLease(ctx, w.res.LeaseID); err != nil || !ok {
		return 0, 0, fmt.Errorf("klock-bench: handoff: waiter release: %v (released %v)", err, ok)
	}
	return handoff, rtt, nil
}
