package server

import (
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/protocol"
)

// flakyJournal is a journal in memory that fails like a disk: with failAt
// set, the round that would write sequence failAt writes what precedes it
// and fails with ENOSPC. It keeps its fault until Heal is called while
// refuse is false.
type flakyJournal struct {
	mu      sync.Mutex
	recs    [][]engine.Record // by sequence - 1
	written uint64
	failAt  uint64 // 0: never fail
	refuse  bool   // Heal fails
	fault   *store.Fault
	epoch   uint64
	lost    [][2]uint64
	heals   int
}

func (j *flakyJournal) Append(recs []engine.Record) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.recs = append(j.recs, recs)
	return uint64(len(j.recs))
}

func (j *flakyJournal) Wait(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, r := range j.lost {
		if seq >= r[0] && seq <= r[1] {
			return &store.UnavailableError{Fault: &store.Fault{Err: syscall.ENOSPC}}
		}
	}
	switch {
	case seq <= j.written:
		return nil
	case j.fault != nil:
		return &store.UnavailableError{Fault: j.fault}
	case j.failAt != 0 && seq >= j.failAt:
		j.written = j.failAt - 1
		j.epoch++
		j.fault = &store.Fault{Err: syscall.ENOSPC, Since: time.Now(), Epoch: j.epoch, Durable: j.written}
		return &store.UnavailableError{Fault: j.fault}
	}
	j.written = uint64(len(j.recs))
	return nil
}

func (j *flakyJournal) Fault() *store.Fault {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.fault
}

func (j *flakyJournal) DurableState() (*engine.State, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	eng := engine.New(engine.Config{})
	for _, recs := range j.recs[:j.fault.Durable] {
		for _, r := range recs {
			if err := eng.Apply(r); err != nil {
				return nil, err
			}
		}
	}
	return eng.Snapshot(), nil
}

func (j *flakyJournal) Heal(*engine.State) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.refuse {
		return errors.New("test: still full")
	}
	j.lost = append(j.lost, [2]uint64{j.fault.Durable + 1, uint64(len(j.recs))})
	// What Heal writes is a snapshot of the state; here the durable
	// records stand for it: the lost ones are dropped.
	for i := j.fault.Durable; i < uint64(len(j.recs)); i++ {
		j.recs[i] = nil
	}
	j.written, j.fault, j.failAt = uint64(len(j.recs)), nil, 0
	j.heals++
	return nil
}

// TestDegradedBatchIsRetractedAndRolledBack: in one pipelined batch, the
// change written before the journal failed is acknowledged, the one after
// is answered UNAVAILABLE and is gone from memory, a parked acquire is
// answered UNAVAILABLE, later changes are refused and reads are served;
// once the journal heals, changes are accepted again.
func TestDegradedBatchIsRetractedAndRolledBack(t *testing.T) {
	j := &flakyJournal{}
	ts := start(t, Config{Journal: j})
	c, parked := ts.dial(t), ts.dial(t)
	ts.parkOne(t, c, parked, "/held")

	j.mu.Lock()
	j.failAt = uint64(len(j.recs)) + 2 // the second acquire below
	j.refuse = true
	j.mu.Unlock()
	var batch []byte
	for i, path := range []string{"/kept", "/lost"} {
		b, err := protocol.AppendRequest(nil, uint64(10+i), protocol.OpAcquire, acquireArgs("young", path, 60000, 0))
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, b...)
	}
	if _, err := c.nc.Write(batch); err != nil {
		t.Fatal(err)
	}
	answers := map[uint64]*protocol.Response{}
	for range 2 {
		r := c.recv()
		answers[r.ID] = r
	}
	if r := answers[10]; r == nil || !r.OK {
		t.Fatalf("the change written before the failure = %+v; want it acknowledged", r)
	}
	if r := answers[11]; r == nil || r.OK || r.Error.Code != protocol.CodeUnavailable {
		t.Fatalf("the change the failure caught = %+v; want UNAVAILABLE", r)
	}
	if r := parked.recv(); r.OK || r.Error.Code != protocol.CodeUnavailable {
		t.Fatalf("the parked acquire = %+v; want UNAVAILABLE", r)
	}
	r := c.call(20, protocol.OpRelease, &protocol.Args{LeaseID: "x"}, nil)
	if r.OK || r.Error.Code != protocol.CodeUnavailable {
		t.Fatalf("a change while degraded = %+v; want UNAVAILABLE", r)
	}
	var list protocol.ListLeasesResult
	c.call(21, protocol.OpListLeases, nil, &list)
	var got []string
	for _, l := range list.Leases {
		got = append(got, l.Resource)
	}
	if len(got) != 2 || got[0] != "FILE:/held" || got[1] != "FILE:/kept" {
		t.Fatalf("leases while degraded = %v; want FILE:/held and FILE:/kept only", got)
	}
	var st protocol.StatsResult
	c.call(22, protocol.OpStats, nil, &st)
	// Totals count decisions, the one rolled back included.
	if !st.Degraded || st.DegradedSince == 0 || st.DegradedReason != "ENOSPC: no space left on device" || st.Grants != 3 {
		t.Fatalf("stats while degraded = %+v; want degraded by ENOSPC, 3 grants", st)
	}

	j.mu.Lock()
	j.refuse = false
	j.mu.Unlock()
	waitFor(t, "the journal to heal", func() bool {
		var st protocol.StatsResult
		c.call(30, protocol.OpStats, nil, &st)
		return !st.Degraded
	})
	c.call(31, protocol.OpAcquire, acquireArgs("young", "/after", 60000, 0), &protocol.Grant{})
	// The heal logs after it lets go of the lock, so its line may follow
	// the first answers that see it healed.
	waitFor(t, "the heal's log line", func() bool { return strings.Contains(ts.logs.String(), "durable again") })
	for _, want := range []string{"cannot make state changes durable", "rolled_back_changes=1", "durable again"} {
		if !strings.Contains(ts.logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, ts.logs.String())
		}
	}
}
