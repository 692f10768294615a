package protocol

// Arg names one request argument; Args.Has reports which were present.
type Arg uint32

// The arguments any operation may take. An operation ignores the ones it
// does not use, as it ignores unknown keys.
const (
	ArgAgentID Arg = 1 << iota
	ArgSessionID
	ArgResourceType
	ArgResourcePath
	ArgPredicate
	ArgTTL
	ArgWaitTimeout
	ArgIdem
	ArgIntents
	ArgLeaseID
	ArgPriority
	ArgClient
	ArgResourcePrefix
	ArgLimit
	ArgWatchID
	ArgBind
	ArgAfter
	ArgClientPath
)

// MaxIntents is the most intents one acquire_many may carry.
const MaxIntents = 64

// argKind is the wire type an argument must have.
type argKind uint8

const (
	kindString  argKind = iota
	kindUint            // a non-negative integer
	kindIntents         // an array of intent maps
)

// argSpec describes one argument key.
type argSpec struct {
	key  string
	arg  Arg
	kind argKind
}

// argSpecs lists every argument key, in encoding order.
var argSpecs = [...]argSpec{
	{"agent_id", ArgAgentID, kindString},
	{"session_id", ArgSessionID, kindString},
	{"resource_type", ArgResourceType, kindString},
	{"resource_path", ArgResourcePath, kindString},
	{"predicate", ArgPredicate, kindString},
	{"ttl", ArgTTL, kindUint},
	{"wait_timeout", ArgWaitTimeout, kindUint},
	{"idem", ArgIdem, kindString},
	{"intents", ArgIntents, kindIntents},
	{"lease_id", ArgLeaseID, kindString},
	{"priority", ArgPriority, kindUint},
	{"client", ArgClient, kindString},
	{"resource_prefix", ArgResourcePrefix, kindString},
	{"limit", ArgLimit, kindUint},
	{"watch_id", ArgWatchID, kindUint},
	{"bind", ArgBind, kindString},
	{"after", ArgAfter, kindString},
	{"client_path", ArgClientPath, kindString},
}

// Intent is one element of acquire_many's intents.
type Intent struct {
	ResourceType string `msgpack:"resource_type"`
	ResourcePath string `msgpack:"resource_path"`
	Predicate    string `msgpack:"predicate"`
	// ClientPath is the FILE path as the client named it, when the
	// worktree rule gave ResourcePath another (protocol/README.md
	// "FILE paths"); "" otherwise.
	ClientPath string `msgpack:"client_path,omitempty"`
}

// Args holds the arguments of any operation. The decoder checks each
// present argument's wire type (strings are UTF-8 strings, numbers are
// non-negative integers that fit in int64); the meaning of the values
// (lengths, ranges, vocabulary) is checked by whoever serves the op.
// Times and durations are milliseconds.
type Args struct {
	AgentID        string
	SessionID      string
	ResourceType   string
	ResourcePath   string
	Predicate      string
	TTL            int64
	WaitTimeout    int64
	Idem           string
	Intents        []Intent
	LeaseID        string
	Priority       int64
	Client         string
	ResourcePrefix string
	Limit          int64
	WatchID        int64
	Bind           string // "", "none" or "process"; the daemon checks the value
	After          string // a list op's cursor: the next of the page before
	ClientPath     string

	present Arg
}

// Has reports whether arg was present (and not nil) in the request.
func (a *Args) Has(arg Arg) bool { return a.present&arg != 0 }

// Set marks arg as present, for a client building a request.
func (a *Args) Set(arg Arg) { a.present |= arg }

// Reset clears a for reuse.
func (a *Args) Reset() {
	intents := a.Intents[:0]
	*a = Args{Intents: intents}
}

func (a *Args) stringField(arg Arg) *string {
	switch arg {
	case ArgAgentID:
		return &a.AgentID
	case ArgSessionID:
		return &a.SessionID
	case ArgResourceType:
		return &a.ResourceType
	case ArgResourcePath:
		return &a.ResourcePath
	case ArgPredicate:
		return &a.Predicate
	case ArgIdem:
		return &a.Idem
	case ArgLeaseID:
		return &a.LeaseID
	case ArgClient:
		return &a.Client
	case ArgResourcePrefix:
		return &a.ResourcePrefix
	case ArgBind:
		return &a.Bind
	case ArgAfter:
		return &a.After
	case ArgClientPath:
		return &a.ClientPath
	}
	return nil
}

func (a *Args) uintField(arg Arg) *int64 {
	switch arg {
	case ArgTTL:
		return &a.TTL
	case ArgWaitTimeout:
		return &a.WaitTimeout
	case ArgPriority:
		return &a.Priority
	case ArgLimit:
		return &a.Limit
	case ArgWatchID:
		return &a.WatchID
	}
	return nil
}

// lookupArg finds the argument named key: in its slot of argSlots, then
// one comparison, instead of a comparison with every key before it.
func lookupArg(key []byte) (argSpec, bool) {
	if len(key) == 0 {
		return argSpec{}, false
	}
	i := argSlots[argSlot(len(key), key[0], key[len(key)-1])]
	if i < 0 || string(key) != argSpecs[i].key {
		return argSpec{}, false
	}
	return argSpecs[i], true
}

// argSlot is the slot of argSlots of a key of n bytes from first to last.
func argSlot(n int, first, last byte) int {
	return (n*2 ^ int(first)*7 ^ int(last)) & (argSlotCount - 1)
}

const argSlotCount = 64 // a power of 2

// argSlots holds the index in argSpecs of the key in each slot, or -1;
// no two keys share a slot (a new key that does panics at start).
var argSlots = func() (t [argSlotCount]int8) {
	for i := range t {
		t[i] = -1
	}
	for i, s := range argSpecs {
		h := argSlot(len(s.key), s.key[0], s.key[len(s.key)-1])
		if t[h] >= 0 {
			panic("protocol: argument keys " + argSpecs[t[h]].key + " and " + s.key + " share a slot of argSlots; change argSlot")
		}
		t[h] = int8(i)
	}
	return t
}()
