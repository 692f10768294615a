package store

import (
	"math"
	"reflect"

	"github.com/klockd/klock/daemon/engine"
)

// decodeStateFast decodes a snapshot body written by the msgpack library
// for an engine.State without reflection, as decodeRecordFast does for
// records: anything it does not expect (unknown or repeated keys, empty
// arrays, odd types) hands the body back to the library, and it is used
// only while the engine's structs have the layout below.

const (
	stateLayout      = "Version int v;Fence uint64 f;LastAuto int64 la;Agents []engine.AgentState a;Leases []engine.LeaseState l;Frozen []string z;Ended []engine.SessionRef e;"
	agentStateLayout = "ID string id;Priority int64 p;RegisteredAt int64 at;UID uint32 u;Unregistered bool x,omitempty;"
	leaseStateLayout = "Lease engine.Lease l;Idem string i,omitempty;"
	sessionRefLayout = "AgentID string a;SessionID string s;"
)

// fastState reports whether decodeStateFast matches the engine's structs.
var fastState = fastEncode &&
	layoutOf(reflect.TypeFor[engine.State]()) == stateLayout &&
	layoutOf(reflect.TypeFor[engine.AgentState]()) == agentStateLayout &&
	layoutOf(reflect.TypeFor[engine.LeaseState]()) == leaseStateLayout &&
	layoutOf(reflect.TypeFor[engine.SessionRef]()) == sessionRefLayout

var (
	stateKeys      = map[string]uint{"v": 0, "f": 1, "la": 2, "a": 3, "l": 4, "z": 5, "e": 6}
	agentStateKeys = map[string]uint{"id": 0, "p": 1, "at": 2, "u": 3, "x": 4}
	leaseStateKeys = map[string]uint{"l": 0, "i": 1}
	sessionRefKeys = map[string]uint{"a": 0, "s": 1}
)

// sliceLen reads an array length for a slice: -1 for nil, which the
// library decodes as a nil slice.
func (r *mpReader) sliceLen() int {
	if len(r.b) > 0 && r.b[0] == 0xc0 {
		r.b = r.b[1:]
		return -1
	}
	return r.arrayLenMax(math.MaxInt)
}

// decodeStateFast decodes body, or reports false when the library must.
func decodeStateFast(body []byte) (*engine.State, bool) {
	if !fastState {
		return nil, false
	}
	r := mpReader{b: body, ok: true}
	st := new(engine.State)
	var seen uint16
	for n := r.mapLen(); n > 0 && r.ok; n-- {
		switch r.key(stateKeys, &seen) {
		case "v":
			st.Version = int(r.int(math.MinInt64, math.MaxInt64))
		case "f":
			st.Fence = r.uint64()
		case "la":
			st.LastAuto = r.int(math.MinInt64, math.MaxInt64)
		case "a":
			if n := r.sliceLen(); n >= 0 {
				st.Agents = make([]engine.AgentState, n)
				for i := range st.Agents {
					r.agentState(&st.Agents[i])
				}
			}
		case "l":
			if n := r.sliceLen(); n >= 0 {
				st.Leases = make([]engine.LeaseState, n)
				for i := range st.Leases {
					r.leaseState(&st.Leases[i])
				}
			}
		case "z":
			if n := r.sliceLen(); n >= 0 {
				st.Frozen = make([]string, n)
				for i := range st.Frozen {
					st.Frozen[i] = r.str()
				}
			}
		case "e":
			if n := r.sliceLen(); n >= 0 {
				st.Ended = make([]engine.SessionRef, n)
				for i := range st.Ended {
					r.sessionRef(&st.Ended[i])
				}
			}
		}
	}
	if !r.ok || len(r.b) != 0 {
		return nil, false
	}
	return st, true
}

func (r *mpReader) agentState(a *engine.AgentState) {
	var seen uint16
	for n := r.mapLen(); n > 0 && r.ok; n-- {
		switch r.key(agentStateKeys, &seen) {
		case "id":
			a.ID = r.str()
		case "p":
			a.Priority = r.int(math.MinInt64, math.MaxInt64)
		case "at":
			a.RegisteredAt = r.int(math.MinInt64, math.MaxInt64)
		case "u":
			a.UID = uint32(r.int(0, math.MaxUint32))
		case "x":
			a.Unregistered = r.bool()
		}
	}
}

func (r *mpReader) leaseState(l *engine.LeaseState) {
	var seen uint16
	for n := r.mapLen(); n > 0 && r.ok; n-- {
		switch r.key(leaseStateKeys, &seen) {
		case "l":
			r.lease(&l.Lease)
		case "i":
			l.Idem = r.str()
		}
	}
}

func (r *mpReader) sessionRef(s *engine.SessionRef) {
	var seen uint16
	for n := r.mapLen(); n > 0 && r.ok; n-- {
		switch r.key(sessionRefKeys, &seen) {
		case "a":
			s.AgentID = r.str()
		case "s":
			s.SessionID = r.str()
		}
	}
}
