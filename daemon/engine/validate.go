package engine

import (
	"fmt"

	"github.com/klockd/klock/protocol"
)

// Limits on arguments: protocol's, which the Go client checks too.
const (
	MaxIDLen     = protocol.MaxIDLen
	MaxPathLen   = protocol.MaxPathLen
	MaxPathDepth = protocol.MaxPathDepth
	MaxIdemLen   = protocol.MaxIdemLen
	MaxIntents   = protocol.MaxIntents
	DefaultLimit = protocol.DefaultLimit
	MaxLimit     = protocol.MaxLimit
	maxPrefixLen = protocol.MaxPrefixLen
)

func errorf(code protocol.Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalidf(format string, args ...any) *Error {
	return errorf(protocol.CodeInvalidArgument, format, args...)
}

func unknownAgent(id string) *Error {
	return errorf(protocol.CodeUnknownAgent, "klock: agent %q is not registered", id)
}

func permissionDenied(c Caller, what string) *Error {
	return errorf(protocol.CodePermissionDenied, "klock: uid %d may not %s", c.UID, what)
}

// limitReached is the RESOURCE_EXHAUSTED error for a configured limit: what
// it counts, its value, what makes room and the klockd flag that raises it.
func limitReached(what string, limit int, remedy, flag string) *Error {
	return errorf(protocol.CodeResourceExhausted, "klock: the %s limit (%d) is reached; %s or raise --%s", what, limit, remedy, flag)
}

// checkText checks a string argument: 1..max bytes of UTF-8 without NUL or
// other control characters (protocol.CheckText, so that the Go client's
// own check says the same).
func checkText(name, s string, max int) *Error {
	if msg := protocol.CheckText(name, s, max); msg != "" {
		return &Error{Code: protocol.CodeInvalidArgument, Message: msg}
	}
	return nil
}

// checkArg is checkText for the argument n, its name formatted only when
// there is an error to report.
func checkArg(n protocol.ArgName, s string, max int) *Error {
	if protocol.CheckText(n.Key, s, max) == "" {
		return nil
	}
	return checkText(n.String(), s, max)
}

func (e *Engine) checkTTL(name string, ttl int64) *Error {
	if ttl < 1 || ttl > e.cfg.MaxTTL {
		return invalidf("klock: %s %d is out of range; allowed 1..%d ms", name, ttl, e.cfg.MaxTTL)
	}
	return nil
}

// CheckLimit returns a list's limit: 0 means DefaultLimit; out of
// 0..MaxLimit is an INVALID_ARGUMENT *Error.
func CheckLimit(limit int) (int, error) {
	n, err := checkLimit(limit)
	if err != nil {
		return 0, err
	}
	return n, nil
}

func checkLimit(limit int) (int, *Error) {
	switch {
	case limit == 0:
		return DefaultLimit, nil
	case limit < 0 || limit > MaxLimit:
		return 0, invalidf("klock: limit %d is out of range; allowed 0 (= %d) .. %d", limit, DefaultLimit, MaxLimit)
	}
	return limit, nil
}

// ResourceKey returns the resource key "TYPE:path" for a resource type
// (any case) and path. FILE paths must be absolute and are cleaned
// ("/src/./a/../b" is "/src/b"), keeping a trailing '/' ("/src//" is
// "/src/"); other types are taken as given. An unknown type, a relative
// FILE path, or a path that is empty, too long or holds control characters,
// is an INVALID_ARGUMENT *Error.
func ResourceKey(typ, p string) (string, error) {
	k, err := resourceKey(-1, typ, p)
	if err != nil {
		return "", err
	}
	return k, nil
}

// resourceKey is ResourceKey with the arguments named as those of
// intents[in] (for in >= 0; see protocol.ArgName) and a typed error.
func resourceKey(in int, typ, p string) (string, *Error) {
	t, err := parseResourceType(in, typ)
	if err != nil {
		return "", err
	}
	p, err = checkPath(in, t, p)
	if err != nil {
		return "", err
	}
	return resourceTypeNames[t] + ":" + p, nil
}

// checkPath checks a resource_path and returns it as keyed: a FILE path
// must be absolute and is cleaned, keeping a trailing '/' (see
// protocol.CleanFilePath); other types are taken as given. Either may
// have at most MaxPathDepth levels.
func checkPath(in int, t ResourceType, p string) (string, *Error) {
	name := protocol.ArgName{Intent: in, Key: "resource_path"}
	if err := checkArg(name, p, MaxPathLen); err != nil {
		return "", err
	}
	if t == File {
		if p[0] != '/' {
			return "", invalidf("klock: %s %q is relative; a FILE path must be absolute: "+
				"the client makes it absolute against its own working directory, which klockd cannot know", name, p)
		}
		p = protocol.CleanFilePath(p)
	}
	// Every '/' but a trailing one ends a subtree key above the path, which
	// klockd keeps a summary for while something is below it: the limit
	// bounds what one key can cost.
	if protocol.CheckDepth(name.Key, p) != "" {
		return "", &Error{Code: protocol.CodeInvalidArgument, Message: protocol.CheckDepth(name.String(), p)}
	}
	return p, nil
}

// internKey is resourceKey without allocating when the key's resource is
// already known: it builds the key in a scratch buffer and returns the
// resource and its own copy of the key.
func (e *Engine) internKey(in int, typ, p string) (string, *resource, *Error) {
	t, err := parseResourceType(in, typ)
	if err != nil {
		return "", nil, err
	}
	p, err = checkPath(in, t, p)
	if err != nil {
		return "", nil, err
	}
	b := append(e.keyBuf[:0], resourceTypeNames[t]...)
	b = append(b, ':')
	b = append(b, p...)
	e.keyBuf = b
	if r := e.resources.getBytes(b); r != nil {
		return r.key, r, nil
	}
	return string(b), nil, nil
}

func parseResourceType(in int, s string) (ResourceType, *Error) {
	// Fast path: the wire normally carries upper-case names.
	for t := File; t <= ConfigKey; t++ {
		if s == resourceTypeNames[t] {
			return t, nil
		}
	}
	t, err := ParseResourceType(s)
	if err != nil {
		return 0, invalidf("klock: %s %q is not one of %s", protocol.ArgName{Intent: in, Key: "resource_type"}, s, resourceTypeList)
	}
	return t, nil
}

func parsePredicate(in int, s string) (Predicate, *Error) {
	for p := Provides; p <= Renames; p++ {
		if s == predicateNames[p] {
			return p, nil
		}
	}
	p, err := ParsePredicate(s)
	if err != nil {
		return 0, invalidf("klock: %s %q is not one of %s", protocol.ArgName{Intent: in, Key: "predicate"}, s, predicateList)
	}
	return p, nil
}

// target is one parsed intent, with its resource when it has one.
type target struct {
	key        string
	pred       Predicate
	res        *resource // nil until a lease or request is on the key
	clientPath string    // Intent.ClientPath
}

// checkAcquire validates an acquire request and parses its intents into
// dst; minIntents..maxIntents intents are allowed.
func (e *Engine) checkAcquire(req *AcquireRequest, single bool, dst []target) ([]target, *Error) {
	if err := checkText("agent_id", req.AgentID, MaxIDLen); err != nil {
		return nil, err
	}
	if err := checkText("session_id", req.SessionID, MaxIDLen); err != nil {
		return nil, err
	}
	switch {
	case req.Bind != nil && req.TTL == 0: // bound, without a ttl
	case req.TTL == 0:
		return nil, invalidf("klock: ttl 0 is out of range; allowed 1..%d ms, or 0 (none) for a lease bound to its process (bind \"process\")", e.cfg.MaxTTL)
	default:
		if err := e.checkTTL("ttl", req.TTL); err != nil {
			return nil, err
		}
	}
	if req.WaitTimeout < 0 || req.WaitTimeout > e.cfg.MaxTTL {
		return nil, invalidf("klock: wait_timeout %d is out of range; allowed 0..%d ms", req.WaitTimeout, e.cfg.MaxTTL)
	}
	if req.Idem != "" {
		if err := checkText("idem", req.Idem, MaxIdemLen); err != nil {
			return nil, err
		}
	}
	n := len(req.Intents)
	if single && n != 1 {
		return nil, invalidf("klock: acquire takes exactly one resource, got %d", n)
	}
	if n < 1 || n > MaxIntents {
		return nil, invalidf("klock: intents has %d entries; allowed 1..%d", n, MaxIntents)
	}
	for i := range req.Intents {
		in := &req.Intents[i]
		at := i // its arguments are named intents[i].*, a single intent's plainly
		if single {
			at = -1
		}
		key, r, err := e.internKey(at, in.ResourceType, in.ResourcePath)
		if err != nil {
			return nil, err
		}
		p, err := parsePredicate(at, in.Predicate)
		if err != nil {
			return nil, err
		}
		if in.ClientPath != "" {
			if err := checkArg(protocol.ArgName{Intent: at, Key: "client_path"}, in.ClientPath, MaxPathLen); err != nil {
				return nil, err
			}
		}
		dst = append(dst, target{key: key, pred: p, res: r, clientPath: in.ClientPath})
	}
	return dst, checkOverlap(dst)
}

// checkOverlap refuses intents of one request that overlap each other with
// conflicting predicates (issue 14): one lease would conflict with the
// other. Intents on one key with compatible predicates are fine.
func checkOverlap(ts []target) *Error {
	for i := range ts {
		for j := i + 1; j < len(ts); j++ {
			if Conflicts(ts[i].pred, ts[j].pred) && protocol.Overlaps(ts[i].key, ts[j].key) {
				return invalidf("klock: intents[%d] (%s %s) and intents[%d] (%s %s) overlap with conflicting predicates; "+
					"ask for the one that covers the other, or for compatible predicates", i, ts[i].pred, ts[i].key, j, ts[j].pred, ts[j].key)
			}
		}
	}
	return nil
}
