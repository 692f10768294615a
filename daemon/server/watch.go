package server

import (
	"strings"
	"sync"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// Defaults for the watch limits in Config.
const (
	DefaultWatchBuffer = 1024 // events a watcher may be behind before it is cut off
	DefaultMaxWatches  = 256  // watch streams open at once, socket and HTTP together
	maxWatchesPerConn  = 16
)

// WatchFilter selects the events a subscription receives: "" matches
// everything.
type WatchFilter struct {
	AgentID        string // only events whose agent_id is this
	ResourcePrefix string // only events whose resource key starts with this
}

// matches reports whether ev passes the filter.
func (f *WatchFilter) matches(ev *engine.Event) bool {
	return (f.AgentID == "" || ev.AgentID == f.AgentID) && strings.HasPrefix(ev.Resource, f.ResourcePrefix)
}

// Watched is one event as a subscription receives it, with the journal
// sequence its state change must reach before it is shown: a watcher is
// never told of a change that a crash could still undo.
type Watched struct {
	engine.Event
	Seq uint64
}

// Subscription is a stream of events. Wait on Ready, let a Pace gather,
// then Take the events pending, as a batch: the publisher only appends to
// a bounded slice and signals once when it stops being empty, so a reader
// that is busy writing the last batch costs the engine no wake-up, and the
// next batch holds everything published meanwhile. When Take reports the stream closed it
// has ended: by Unsubscribe, or because the subscriber fell WatchBuffer
// events behind (Overflowed then reports true).
type Subscription struct {
	ID int64

	filter WatchFilter
	limit  int           // events pending at most (WatchBuffer)
	ready  chan struct{} // capacity 1: a token when events are pending or the stream ended
	hurry  chan struct{} // capacity 1: a token when half of limit is pending or the stream ended (pace.go)

	mu         sync.Mutex
	pending    []Watched // published, not yet taken, oldest first
	ended      bool
	overflowed bool
}

// Ready returns a channel that receives a token when events may be
// pending or the stream has ended: then call Take. A token may come with
// nothing to take.
func (sub *Subscription) Ready() <-chan struct{} { return sub.ready }

// Take returns the pending events, oldest first, and whether the stream is
// still open; once it reports false, no event follows those it returned.
// It keeps buf (emptied) to collect the next events: pass back the batch
// the previous Take returned, once done with it, and no allocation is made.
func (sub *Subscription) Take(buf []Watched) (evs []Watched, open bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	evs, sub.pending = sub.pending, buf[:0]
	select { // what hurried a reader is taken now
	case <-sub.hurry:
	default:
	}
	return evs, !sub.ended
}

// Overflowed reports whether the stream ended because the subscriber did
// not keep up.
func (sub *Subscription) Overflowed() bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.overflowed
}

// signal leaves a token on ready unless one is there already.
func (sub *Subscription) signal() {
	select {
	case sub.ready <- struct{}{}:
	default:
	}
}

// end closes the stream; the reader takes what is pending, then sees it
// closed.
func (sub *Subscription) end(overflowed bool) {
	sub.mu.Lock()
	sub.ended, sub.overflowed = true, overflowed
	sub.hasten()
	sub.mu.Unlock()
	sub.signal()
}

// offer appends the events of one state change that pass the filter; it
// reports false, appending nothing more, when the subscriber is limit
// events behind. Never blocks but on the subscription's own lock, which
// Take holds only to swap two slices.
func (sub *Subscription) offer(evs []engine.Event, seq uint64) bool {
	sub.mu.Lock()
	was := len(sub.pending)
	for i := range evs {
		if !sub.filter.matches(&evs[i]) {
			continue
		}
		if len(sub.pending) >= sub.limit {
			sub.mu.Unlock()
			return false
		}
		sub.pending = append(sub.pending, Watched{Event: evs[i], Seq: seq})
	}
	if half := max(sub.limit/2, 1); was < half && len(sub.pending) >= half {
		sub.hasten()
	}
	wake := was == 0 && len(sub.pending) > 0
	sub.mu.Unlock()
	if wake {
		sub.signal()
	}
	return true
}

// Subscribe opens an event stream with the filter. It fails with
// RESOURCE_EXHAUSTED when MaxWatches streams are open, INVALID_ARGUMENT
// for a bad filter, and SHUTTING_DOWN once the server stops. Publishing
// never blocks: a subscriber that falls behind is cut off.
func (s *Server) Subscribe(f WatchFilter) (*Subscription, error) {
	if err := engine.CheckFilter(f.AgentID, f.ResourcePrefix); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subscribeLocked(f)
}

func (s *Server) subscribeLocked(f WatchFilter) (*Subscription, error) {
	if s.closed {
		return nil, errShuttingDown
	}
	if len(s.subs) >= s.cfg.MaxWatches {
		return nil, &protocol.Error{Code: protocol.CodeResourceExhausted,
			Message: "klock: too many watch streams open; the daemon allows " + itoa(s.cfg.MaxWatches) + " (--max-watches)"}
	}
	s.nextWatch++
	sub := &Subscription{ID: s.nextWatch, filter: f, limit: s.cfg.WatchBuffer, ready: make(chan struct{}, 1), hurry: make(chan struct{}, 1)}
	s.subs = append(s.subs, sub)
	if len(s.subs) == 1 {
		s.eng.SetEvents(true)
	}
	return sub, nil
}

// Unsubscribe ends a stream: no more events are sent, and Take reports it
// closed once it has returned those pending. It reports whether the stream
// was still open.
func (s *Server) Unsubscribe(sub *Subscription) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unsubscribeLocked(sub)
}

func (s *Server) unsubscribeLocked(sub *Subscription) bool {
	return s.endLocked(sub, false)
}

// endLocked ends the stream sub, overflowed or not, if it is open; the
// caller holds s.mu.
func (s *Server) endLocked(sub *Subscription, overflowed bool) bool {
	for i, x := range s.subs {
		if x == sub {
			s.subs = append(s.subs[:i], s.subs[i+1:]...)
			sub.end(overflowed)
			if len(s.subs) == 0 {
				s.eng.SetEvents(false)
			}
			return true
		}
	}
	return false
}

// publishLocked hands the events of the state change just journalled (at
// seq) to every matching subscription, without ever blocking: a
// subscription whose buffer is full is ended as overflowed. The caller
// holds s.mu.
func (s *Server) publishLocked(evs []engine.Event, seq uint64) {
	if len(evs) == 0 {
		return
	}
	for j := 0; j < len(s.subs); j++ {
		if sub := s.subs[j]; !sub.offer(evs, seq) {
			s.endLocked(sub, true)
			j-- // the next subscription moved to j
		}
	}
}

// WaitDurable waits until every journal record up to seq is written (at
// once without a journal). Show a Watched event after WaitDurable(ev.Seq).
func (s *Server) WaitDurable(seq uint64) error {
	if seq == 0 || s.cfg.Journal == nil {
		return nil
	}
	return s.cfg.Journal.Wait(seq)
}

// socketWatch is a watch stream of a socket connection: the subscription,
// the request id its events answer, and the goroutine that writes them.
type socketWatch struct {
	sub  *Subscription
	id   uint64        // the watch request's id
	done chan struct{} // closed when the pump has written its last event
}

// watch serves watch: the first answer is {watching, watch_id}; every
// matching event follows as another answer with the same id.
func (s *Server) watch(c *conn, id uint64, a *protocol.Args) {
	f := WatchFilter{AgentID: a.AgentID, ResourcePrefix: a.ResourcePrefix}
	if err := engine.CheckFilter(f.AgentID, f.ResourcePrefix); err != nil {
		c.answerErr(id, err, 0)
		return
	}
	w, seq, err := func() (*socketWatch, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(c.watches) >= maxWatchesPerConn {
			return nil, s.lastSeq, &protocol.Error{Code: protocol.CodeResourceExhausted,
				Message: "klock: too many watch streams on this connection; at most " + itoa(maxWatchesPerConn) + " may be open at once"}
		}
		sub, err := s.subscribeLocked(f)
		if err != nil {
			return nil, s.lastSeq, err
		}
		w := &socketWatch{sub: sub, id: id, done: make(chan struct{})}
		if c.watches == nil {
			c.watches = make(map[int64]*socketWatch)
		}
		c.watches[sub.ID] = w
		return w, s.lastSeq, nil
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	// The first answer is appended before the pump starts, so it comes
	// before every event.
	c.appendResult(id, &protocol.WatchResult{Watching: true, WatchID: w.sub.ID}, seq)
	go c.pump(w)
}

// unwatch serves unwatch: the stream ends, and its last event is written
// before the answer.
func (s *Server) unwatch(c *conn, id uint64, a *protocol.Args) {
	if a.WatchID == 0 {
		c.appendError(id, protocol.CodeInvalidArgument, "klock: watch_id is required: the watch_id the watch answered", 0)
		return
	}
	w := func() *socketWatch {
		s.mu.Lock()
		defer s.mu.Unlock()
		w := c.watches[a.WatchID]
		if w != nil {
			delete(c.watches, a.WatchID)
			s.unsubscribeLocked(w.sub)
		}
		return w
	}()
	if w != nil {
		<-w.done
	}
	c.appendResult(id, &protocol.UnwatchResult{Unwatched: w != nil}, 0)
}

// maxPumpBatch bounds the events a pump encodes before writing them: a
// write of at most a few hundred KiB, well under MaxOutbound.
const maxPumpBatch = 1024

// pump writes a watch's events to the connection, a batch per write. It
// runs until the subscription ends, then writes the final overflow event
// if the watcher fell behind. A slow reader blocks only this goroutine
// (and, past WriteTimeout, loses its connection); the engine never waits.
//
// Wake-ups and writes are coalesced: the publisher signals only when the
// pending slice stops being empty, the pump takes everything pending at
// once, and a busy stream's batches are spaced by Pace, so the events
// published meanwhile go out in one write (BENCHMARKS.md "What a watcher
// costs").
func (c *conn) pump(w *socketWatch) {
	defer close(w.done)
	var batch []Watched
	var pace Pace
	for open := true; open; {
		<-w.sub.Ready()
		pace.Gather(w.sub)
		batch, open = w.sub.Take(batch)
		for i := 0; i < len(batch); i += maxPumpBatch {
			c.appendEvents(w.id, batch[i:min(i+maxPumpBatch, len(batch))])
			if c.flushWait() != nil {
				// The connection is gone; finish unsubscribes. Keep
				// taking, so the publisher's buffer stays empty until then.
				for open {
					<-w.sub.Ready()
					batch, open = w.sub.Take(batch)
				}
				return
			}
		}
	}
	if w.sub.Overflowed() {
		c.appendEvents(w.id, []Watched{{Event: engine.Event{At: c.s.nowMS()}}})
		c.flushWait()
	}
}

// appendEvents appends events as answers to the watch request id, under
// one lock. An event of kind 0 is the final overflow. Events are not
// requests answered: stats' ops does not count them.
func (c *conn) appendEvents(id uint64, batch []Watched) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.dead {
		return
	}
	var ev protocol.WatchEvent
	for i := range batch {
		p := &batch[i]
		if p.Kind == 0 {
			ev = protocol.WatchEvent{Event: protocol.EventOverflow, At: p.At}
		} else {
			ev = WatchEvent(&p.Event)
		}
		off := len(c.out)
		out, err := protocol.AppendResult(c.out, id, &ev)
		if err != nil { // cannot happen: a watch event has its own encoder
			c.s.log.Error("encoding a watch event failed", "id", id, "err", err)
			continue
		}
		c.storeLocked(out, answerMark{off: off, id: id, seq: p.Seq, event: true})
		if c.dead {
			return
		}
	}
}

// WatchEvent converts an engine event to its wire form.
func WatchEvent(e *engine.Event) protocol.WatchEvent {
	ev := protocol.WatchEvent{
		Event: e.Kind.String(), At: e.At, Resource: e.Resource, AgentID: e.AgentID, SessionID: e.SessionID,
		LeaseID: e.LeaseID, Fence: e.Fence, ExpiresAt: wireExpiry(e.ExpiresAt), BoundPID: e.BoundPID,
		Reason: e.Reason, HeldBy: e.HeldBy,
	}
	if e.Predicate != 0 {
		ev.Predicate = e.Predicate.String()
	}
	return ev
}

// endWatchesLocked ends every watch of a closing connection; the caller
// holds s.mu and waits for the pumps (waitWatches) after closing the socket.
func (c *conn) endWatchesLocked() {
	for _, w := range c.watches {
		c.s.unsubscribeLocked(w.sub)
	}
}

// waitWatches waits until the pumps of c's watches have returned.
func (c *conn) waitWatches() {
	for _, w := range c.watches {
		<-w.done
	}
}

// endSubscriptionsLocked ends every stream (shutdown); the caller holds s.mu.
func (s *Server) endSubscriptionsLocked() {
	for len(s.subs) > 0 {
		s.unsubscribeLocked(s.subs[0])
	}
}
