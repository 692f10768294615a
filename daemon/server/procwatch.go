package server

import (
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// procWatcher waits for the processes that leases are bound to to end.
// It holds one pidfd per process, shared by all its leases, in one epoll
// set; Go's poller waits on that set, so one goroutine serves every
// process, and a process costs one descriptor. (A goroutine blocked on each
// pidfd would cost a goroutine and its stack per agent.) When a process
// ends, its pidfd becomes readable, and the server ends its leases as a
// release would (Server.processesEnded).
//
// A watch outlives the process's leases: it is closed when the process
// ends, or, when the limit is reached, if nothing is bound to its process
// any more (reclaimLocked). Every field is guarded by Server.mu.
type procWatcher struct {
	limit   int                       // most watches; 0 = no limit
	ep      *os.File                  // the epoll set, in Go's poller; nil until the first watch
	watches map[engine.Process]*watch // by process
	byKey   map[uint64]*watch         // by epoll key
	lastKey uint64                    // keys are never reused, so a stale event matches nothing
	done    chan struct{}             // closed when the loop returns
	closed  bool
	// stopping is set before the epoll set is closed, so the loop, which
	// reads it without Server.mu, knows its error is the close.
	stopping atomic.Bool
}

// watch is one watched process.
type watch struct {
	proc  engine.Process
	pidfd int
	key   uint64
}

func newProcWatcher(limit int) *procWatcher {
	return &procWatcher{
		limit:   limit,
		watches: make(map[engine.Process]*watch),
		byKey:   make(map[uint64]*watch),
	}
}

// len returns the number of watched processes (open pidfds).
func (w *procWatcher) len() int { return len(w.watches) }

// watching reports whether p is watched.
func (w *procWatcher) watching(p engine.Process) bool {
	_, ok := w.watches[p]
	return ok
}

// holdLocked makes sure p is watched, adopting pidfd (which refers to p)
// when it is not yet, closing it otherwise; pidfd -1 means open one with
// open. Past the limit it first closes the watches of processes nothing is
// bound to; if none, it is RESOURCE_EXHAUSTED. The caller holds Server.mu;
// s is the server whose engine says what is bound.
func (w *procWatcher) holdLocked(s *Server, p engine.Process, pidfd int, open func() (int, error)) error {
	if _, ok := w.watches[p]; ok {
		closeFD(pidfd)
		return nil
	}
	if w.limit > 0 && len(w.watches) >= w.limit {
		w.reclaimLocked(s)
		if len(w.watches) >= w.limit {
			closeFD(pidfd)
			return &engine.Error{Code: protocol.CodeResourceExhausted, Message: "klock: the bound-process limit (" + itoa(w.limit) +
				` processes watched with a pidfd each) is reached; release bound leases, acquire with bind "none", or raise --max-pidfds`}
		}
	}
	if pidfd < 0 {
		var err error
		if pidfd, err = open(); err != nil {
			return err
		}
	}
	return w.addLocked(s, p, pidfd)
}

// addLocked watches p through pidfd, starting the loop with the first
// watch. The caller holds Server.mu.
func (w *procWatcher) addLocked(s *Server, p engine.Process, pidfd int) error {
	if w.closed {
		closeFD(pidfd)
		return errShuttingDown
	}
	if w.ep == nil {
		if err := w.startLocked(s); err != nil {
			closeFD(pidfd)
			return bindError(`klock: bind "process" is not available: klockd cannot create its epoll set: %v`+bindNoneHint, err)
		}
	}
	w.lastKey++
	x := &watch{proc: p, pidfd: pidfd, key: w.lastKey}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	ev.Fd, ev.Pad = int32(uint32(x.key)), int32(uint32(x.key>>32))
	if err := unix.EpollCtl(int(w.ep.Fd()), unix.EPOLL_CTL_ADD, pidfd, &ev); err != nil {
		closeFD(pidfd)
		return bindError(`klock: bind "process" is not available: klockd cannot watch pid %d: %v`+bindNoneHint, p.PID, err)
	}
	w.watches[p] = x
	w.byKey[x.key] = x
	return nil
}

// startLocked creates the epoll set and starts the goroutine that waits on
// it through Go's poller.
func (w *procWatcher) startLocked(s *Server) error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return err
	}
	// Non-blocking, so os.NewFile registers it with the poller.
	w.ep = os.NewFile(uintptr(epfd), "klockd-pidfds")
	rc, err := w.ep.SyscallConn()
	if err != nil {
		w.ep.Close()
		w.ep = nil
		return err
	}
	w.done = make(chan struct{})
	go w.loop(s, rc, w.done)
	return nil
}

// loop waits for watched processes to end and hands them to the server,
// until the epoll set is closed.
func (w *procWatcher) loop(s *Server, rc syscall.RawConn, done chan struct{}) {
	defer close(done)
	events := make([]unix.EpollEvent, 64)
	var keys []uint64
	for {
		keys = keys[:0]
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, err := unix.EpollWait(int(fd), events, 0)
				if err == unix.EINTR {
					continue
				}
				for _, ev := range events[:max(n, 0)] {
					keys = append(keys, uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32)
				}
				if n < len(events) {
					break
				}
			}
			return len(keys) > 0 // false: wait until the set is readable
		})
		if err != nil {
			if !w.stopping.Load() {
				s.log.Error("waiting for bound processes failed; their leases now end only when released or at their ttl", "err", err)
			}
			return
		}
		s.processesEnded(keys)
	}
}

// endedLocked closes the watches of the ended processes named by keys and
// returns those processes; stale keys (a watch closed meanwhile) are
// skipped. The caller holds Server.mu.
func (w *procWatcher) endedLocked(keys []uint64) []engine.Process {
	var out []engine.Process
	for _, k := range keys {
		if x := w.byKey[k]; x != nil {
			w.closeLocked(x)
			out = append(out, x.proc)
		}
	}
	return out
}

// reclaimLocked closes the watches of processes nothing is bound to any
// more. The caller holds Server.mu.
func (w *procWatcher) reclaimLocked(s *Server) {
	for p, x := range w.watches {
		if !s.eng.ProcessBound(p) {
			w.closeLocked(x)
		}
	}
}

// closeLocked stops watching one process. Closing its pidfd takes it out
// of the epoll set.
func (w *procWatcher) closeLocked(x *watch) {
	delete(w.watches, x.proc)
	delete(w.byKey, x.key)
	unix.Close(x.pidfd)
}

// shutdownLocked closes every watch and the epoll set, which ends the loop;
// later holds are refused. It returns the loop's done channel (nil when it
// never started), for the caller to wait on without the lock.
func (w *procWatcher) shutdownLocked() chan struct{} {
	w.closed = true
	for _, x := range w.watches {
		w.closeLocked(x)
	}
	if w.ep == nil {
		return nil
	}
	w.stopping.Store(true)
	w.ep.Close()
	w.ep = nil
	return w.done
}

// closeFD closes fd unless it is -1.
func closeFD(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}
