package engine

// maxEndedSessions is how many ended sessions each agent remembers. The mark
// exists so that an acquire sent in a session after end_session (one still
// in flight, or resent by a reconnecting client) is refused instead of
// starting the session again; such stragglers arrive within seconds, so an
// agent would have to end over a thousand sessions in that time for one to
// slip through. It bounds what a client that never unregisters its agent
// costs: at most 1024 ids of up to MaxIDLen bytes, a few hundred KiB per
// agent at worst and tens of KiB with ordinary ids.
const maxEndedSessions = 1024

// endedSessions is the bounded memory of one agent's ended sessions: a set
// for lookup and the same ids in the order they were ended, so that the
// oldest is forgotten first. The zero value is empty and ready to use.
type endedSessions struct {
	set   map[string]struct{}
	order []string // a ring once full: order[head] is the oldest
	head  int
}

// has reports whether session was ended and is still remembered.
func (s *endedSessions) has(session string) bool {
	if len(s.set) == 0 {
		return false
	}
	_, ok := s.set[session]
	return ok
}

// add remembers session as ended, forgetting the oldest ended session when
// maxEndedSessions are remembered already. A session remembered already
// keeps its place: the live EndSession answers a second end without a
// record, so replay never sees it either, and refreshing here would make
// Apply and Restore disagree with the live engine.
func (s *endedSessions) add(session string) {
	if s.has(session) {
		return
	}
	if s.set == nil {
		s.set = make(map[string]struct{})
	}
	if len(s.order) < maxEndedSessions {
		s.order = append(s.order, session)
	} else {
		delete(s.set, s.order[s.head])
		s.order[s.head] = session
		s.head = (s.head + 1) % len(s.order)
	}
	s.set[session] = struct{}{}
}

// each calls f on every remembered session, oldest first.
func (s *endedSessions) each(f func(session string)) {
	for i := range s.order {
		f(s.order[(s.head+i)%len(s.order)])
	}
}
