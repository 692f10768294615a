package server

// The journal's writer sends answers. In durable mode an answer to a change
// may be sent only once the change's records are written. A connection's
// goroutine that waited for that (store.Wait) slept on the journal's
// condition and was woken, per request, only to write its answer. Instead
// it lists its connection here and goes back to reading; the goroutine
// that leads the journal round writing those records then writes the
// answers of every listed connection whose records it made durable (the
// pass, answerDurable), with non-blocking writes: a socket that is full
// gets the rest from a goroutine of its own, so no client can hold up the
// journal. BENCHMARKS.md, "One connection per agent", has the figures.
//
// Who sends what, so that no answer is left unsent: an answer in a
// connection's out is sent by the pass of the first round after which its
// records are durable, unless the pass finds the connection's writeMu held;
// every holder of writeMu looks at out again, after the journal said the
// records are written, before it lets go (flushLocked).

// answeringJournal is a Journal whose writer lets its owner send answers
// after each round (daemon/store.Store is one).
type answeringJournal interface {
	// Commit asks for a round writing up to seq without waiting for it
	// when another goroutine is writing; it reports whether seq is
	// written. Its errors are Wait's. from is the connection asking.
	Commit(seq uint64, from any) (bool, error)
	// Durable reports whether seq is written (and not lost in a fault).
	Durable(seq uint64) bool
	// OnRound sets what the writer calls after each round, and with
	// failed true when a fault starts.
	OnRound(fn func(failed bool))
}

// listLocked puts c on the list of connections whose answers wait for the
// journal, once. The caller holds c.outMu.
func (c *conn) listLocked() {
	if c.listed {
		return
	}
	c.listed = true
	s := c.s
	s.listMu.Lock()
	s.listed = append(s.listed, c)
	s.listMu.Unlock()
}

// answerDurable is the journal writer's pass after a round: it sends the
// answers of the listed connections whose records are now durable, and
// keeps listed those still waiting. When the journal has failed, every
// listed connection is flushed by a goroutine of its own instead, which
// learns of the fault and answers it (conn.send).
func (s *Server) answerDurable(failed bool) {
	s.listMu.Lock()
	list := s.listed
	if len(list) == 0 {
		s.listMu.Unlock()
		return
	}
	s.listed, s.listSpare = s.listSpare[:0], nil
	s.listMu.Unlock()

	keep := list[:0]
	for _, c := range list {
		if c.answerDurable(failed) {
			keep = append(keep, c)
		}
	}
	clear(list[len(keep):])
	s.listMu.Lock()
	s.listed = append(s.listed, keep...)
	if s.listSpare == nil {
		s.listSpare = list[:0]
	}
	s.listMu.Unlock()
}

// answerDurable sends c's answers if their records are durable, from the
// journal writer's pass; it reports whether c stays listed.
func (c *conn) answerDurable(failed bool) bool {
	c.outMu.Lock()
	switch {
	case c.dead || len(c.out) == 0:
		c.listed = false
		c.outMu.Unlock()
		return false
	case failed:
		c.listed = false
		c.outMu.Unlock()
		c.kick()
		return false
	case !c.s.aj.Durable(c.outSeq):
		c.outMu.Unlock()
		return true
	}
	c.listed = false
	c.outMu.Unlock()
	if !c.writeMu.TryLock() {
		return false // its holder sends them (flushLocked)
	}
	c.sendDurable()
	return false
}

// sendDurable writes what out holds, when its records are durable, without
// waiting for the socket: the journal's writer calls it. What the socket
// does not take at once is written by a goroutine of its own. The caller
// holds writeMu, which is released (or handed to that goroutine).
func (c *conn) sendDurable() {
	c.outMu.Lock()
	if c.dead || len(c.out) == 0 || !c.s.aj.Durable(c.outSeq) {
		// Answers appended since wait for records not yet written: the
		// goroutine that appended them flushes once writeMu is free.
		c.outMu.Unlock()
		c.writeMu.Unlock()
		return
	}
	buf, marks := c.out, c.marks
	c.out, c.spare, c.outSeq = c.spare[:0], nil, 0
	c.marks, c.spareM = c.spareM[:0], nil
	c.outMu.Unlock()

	n, err := c.sk.TryWrite(buf)
	if err == nil && n < len(buf) {
		go func() {
			err := c.writeWaiting(buf[n:])
			c.recycle(buf, marks)
			if err != nil {
				c.writeFailed(err)
				c.writeMu.Unlock()
				return
			}
			c.flushLocked(true)
		}()
		return
	}
	c.recycle(buf, marks)
	if err != nil {
		c.writeFailed(err)
	}
	c.writeMu.Unlock()
}
