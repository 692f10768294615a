package daemon

import (
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/server"
	"github.com/klockd/klock/daemon/store"
)

// openState returns the engine to serve, with its state recovered from the
// state directory, the journal that makes its changes durable (nil in
// memory), and a function that closes the store once the server has
// stopped.
func (d *Daemon) openState(ecfg engine.Config) (*engine.Engine, server.Journal, func(), error) {
	if d.cfg.StateDir == "" {
		eng := engine.New(ecfg)
		if err := eng.Restore(&engine.State{Version: engine.StateVersion, Fence: memoryFenceBase(time.Now())}); err != nil {
			return nil, nil, nil, err
		}
		return eng, nil, func() {}, nil
	}
	fsync, err := store.ParseFsyncMode(d.cfg.Fsync)
	if err != nil {
		return nil, nil, nil, err
	}
	rec, err := store.ParseRecoverMode(d.cfg.Recover)
	if err != nil {
		return nil, nil, nil, err
	}
	// A fault (a full or failing disk) is acted on at once, not at the
	// next request; the server exists by the time one can happen.
	onFault := func() {
		if srv := d.srv.Load(); srv != nil {
			srv.NoticeFault()
		}
	}
	st, err := store.Open(d.cfg.StateDir, store.Options{Fsync: fsync, Recover: rec, Logger: d.log, OnFault: onFault, ObserveWrite: d.observeWrite})
	if err != nil {
		return nil, nil, nil, err
	}
	ecfg.Journal = true
	eng := engine.New(ecfg)
	// Recover logs what it loaded and how long it took.
	if _, err := st.Recover(eng); err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	st.Start()
	closeStore := func() {
		if err := st.Close(); err != nil {
			d.log.Error("closing the state directory failed", "state_dir", st.Dir(), "err", err)
		}
	}
	return eng, st, closeStore, nil
}

// memoryFenceBase is the last fence a klockd without a state directory
// counts as issued when it starts: the wall clock in microseconds. A
// restarted klockd has no log to continue from, and a fencing token that
// went backwards would let a stale holder win; starting from the clock, the
// fences of a new run are above those of every earlier run as long as that
// run granted fewer than a million leases per second on average and the
// wall clock did not step back between the runs. (2^53 µs, the largest
// integer a float64 holds exactly, is reached in the year 2255.)
func memoryFenceBase(now time.Time) uint64 {
	return uint64(now.UnixMicro())
}
