package server

import (
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hupPoller tells a connection's reader that its peer has shut down, when
// Go's poller may not: it lets the reader wait without the read(2) that
// would return EAGAIN after each answer (conn.serve).
//
// The reader stays inside one RawConn.Read for the connection's life, so
// Go's poller keeps every edge of the socket for it: RawConn.Read clears
// the socket's readiness (prepareRead) only once, on entry; between the
// callback's returns it only waits (waitRead), and a readiness edge that
// came while the reader was busy makes that wait return at once
// (runtime/netpoll.go, netpollblock: "Consume notification if already
// ready"). A reader whose read was short has emptied the socket, so it
// waits for the next edge without reading again.
//
// One case escapes: edges that come together, between Go's poller waking
// the reader and the reader running, count as one. Data edges may: the
// read takes everything that arrived. But the peer's shutdown after its
// last request (a client that sends and then shuts down its writing side,
// or exits) can come with that request's data; the short read takes the
// data, not the end of stream, and a reader waiting for another edge would
// wait for ever. This poller watches each socket for EPOLLRDHUP alone
// (epoll(7); EPOLLHUP and EPOLLERR are always reported) on an epoll
// instance of its own, edge-triggered, and on that event shuts down the
// socket's reading side (shutdown(2) SHUT_RD): which changes nothing a
// read can return, since the peer will send nothing more, and is a state
// change of the socket, a new edge for the reader, who reads and sees the
// end of stream. Data wakes nothing here: the socket's wake-ups for data
// carry EPOLLIN, which the registration's mask filters out in the kernel.
type hupPoller struct {
	epfd int
	f    *os.File // epfd, waiting in Go's poller
	rc   syscall.RawConn

	// conns maps a registration's id, which its events carry, to the
	// connection. An id is never reused, so an event of a closed socket
	// whose descriptor number was reused finds nothing (a descriptor
	// leaves an epoll instance only when its open file is released,
	// which a duplicate held elsewhere, as across a fork, delays).
	mu     sync.Mutex
	conns  map[uint64]*sock
	nextID uint64

	events []unix.EpollEvent
	n      int // events filled by the last poll
	pollFn func(fd uintptr) bool
	done   chan struct{}
}

// newHupPoller creates the epoll instance and starts its goroutine.
func newHupPoller() (*hupPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// Non-blocking, so that os.NewFile registers it with Go's poller (an
	// epoll descriptor is pollable: readable while events are pending).
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	f := os.NewFile(uintptr(epfd), "klockd-hup-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &hupPoller{
		epfd:   epfd,
		f:      f,
		rc:     rc,
		conns:  make(map[uint64]*sock),
		events: make([]unix.EpollEvent, 64),
		done:   make(chan struct{}),
	}
	p.pollFn = p.poll
	go p.run()
	return p, nil
}

// close stops the poller; it returns once its goroutine has ended.
func (p *hupPoller) close() {
	p.f.Close()
	<-p.done
}

func (p *hupPoller) run() {
	defer close(p.done)
	for {
		if err := p.rc.Read(p.pollFn); err != nil {
			return // closed
		}
		for _, ev := range p.events[:p.n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			s := p.conns[id]
			p.mu.Unlock()
			if s != nil {
				// Through the net.UnixConn, which holds the descriptor open
				// for the call: it fails, harmlessly, once it is closed.
				s.nc.CloseRead()
			}
		}
	}
}

// poll is one epoll_pwait(2) that does not block, made raw for the reason
// protocol.ReadRaw gives; false asks Go's poller to wait.
func (p *hupPoller) poll(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd,
			uintptr(unsafe.Pointer(&p.events[0])), uintptr(len(p.events)), 0, 0, 0)
		switch e {
		case 0:
			p.n = int(n)
			return n > 0
		case syscall.EINTR:
			continue
		}
		p.n = 0
		return true
	}
}

// add registers s's descriptor fd, which the caller holds open, and
// returns the registration's id. A shutdown that has already happened is
// reported at once (epoll_ctl(2) reports the current state on EPOLL_CTL_ADD).
func (p *hupPoller) add(fd uintptr, s *sock) (uint64, error) {
	p.mu.Lock()
	p.nextID++
	id := p.nextID
	p.conns[id] = s
	p.mu.Unlock()
	ev := unix.EpollEvent{
		Events: unix.EPOLLRDHUP | unix.EPOLLET,
		Fd:     int32(uint32(id)),
		Pad:    int32(uint32(id >> 32)),
	}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		p.forget(id)
		return 0, err
	}
	return id, nil
}

// remove unregisters fd, which the caller holds open, and forgets id.
func (p *hupPoller) remove(fd uintptr, id uint64) {
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	p.forget(id)
}

func (p *hupPoller) forget(id uint64) {
	p.mu.Lock()
	delete(p.conns, id)
	p.mu.Unlock()
}

// hupPoller returns the server's poller, made at the first call; nil once
// it has been stopped, or when it cannot be made: readers then read until
// EAGAIN before each wait, as they did before it.
func (s *Server) hupPoller() *hupPoller {
	s.polMu.Lock()
	defer s.polMu.Unlock()
	if s.pol == nil && !s.polStop {
		p, err := newHupPoller()
		if err != nil {
			s.log.Warn("no epoll instance for peer shutdowns; reads wait after EAGAIN", "err", err)
			s.polStop = true
			return nil
		}
		s.pol = p
	}
	return s.pol
}

// stopHupPoller stops the poller once every connection has ended.
func (s *Server) stopHupPoller() {
	s.polMu.Lock()
	p := s.pol
	s.pol, s.polStop = nil, true
	s.polMu.Unlock()
	if p != nil {
		p.close()
	}
}
