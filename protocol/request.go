package protocol

import (
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/klockd/klock/internal/msgpackwire"
)

// Request is a decoded request frame.
type Request struct {
	ID   uint64 // non-zero; 0 when it could not be read
	Op   string
	Args Args
}

// DecodeRequest decodes a request body into req, reusing req's storage.
// It returns a *Error with CodeBadRequest when the body is not a msgpack map,
// id is missing or not a positive integer, op is missing or not a string, or
// args is present and not a map; and CodeInvalidArgument when an argument the
// op takes has the wrong wire type, naming the argument. Keys the op does not
// take are ignored whatever their values, as unknown keys are; for an unknown
// op no argument is checked (the caller answers UNKNOWN_OP). req.ID is set
// whenever the id could be read, so the error can be answered with it. A nil
// id, op or argument counts as absent.
//
// The strings in req share one allocation: a copy of body.
func DecodeRequest(body []byte, req *Request) error {
	req.ID, req.Op = 0, ""
	req.Args.Reset()
	d := requestDecoder{args: &req.Args}
	d.r.Reset(body)
	n, err := d.r.MapLen()
	if err != nil {
		return &Error{Code: CodeBadRequest, Message: "klock: request body is not a msgpack map"}
	}
	// Keep reading after a bad value, so the id can still be found and
	// answered; stop only when the msgpack itself is broken.
	var badReq string
	var haveOp, broken bool
	for i := 0; i < n && !broken; i++ {
		key, isKey, err := d.key()
		if err != nil {
			badReq, broken = malformed(err), true
			break
		}
		if !isKey {
			continue
		}
		var msg string
		switch string(key) {
		case "id":
			req.ID, msg, err = d.id()
		case "op":
			var c byte
			c, err = d.r.Peek()
			switch {
			case err != nil:
			case c == msgpcode.Nil:
				err = d.r.Skip()
			case !msgpackwire.IsStr(c):
				msg = fmt.Sprintf("klock: request op must be a string, got %s", msgpackwire.KindName(c))
				err = d.r.Skip()
			default:
				req.Op, err = d.op()
				haveOp = true
			}
		case "args":
			msg, err = d.decodeArgs()
		default:
			err = d.r.Skip()
		}
		if err != nil {
			badReq, broken = malformed(err), true
		} else if msg != "" && badReq == "" {
			badReq = msg
		}
	}
	switch {
	case badReq != "":
	case d.r.Rest() != 0:
		badReq = "klock: request body holds bytes after its msgpack map"
	case req.ID == 0:
		badReq = "klock: request has no id; id must be a positive integer"
	case !haveOp:
		badReq = "klock: request has no op; op must be a string naming an operation"
	}
	if badReq != "" {
		return &Error{Code: CodeBadRequest, Message: badReq}
	}
	if len(d.errs) == 0 {
		return nil
	}
	takes := OpArgs(req.Op)
	for _, e := range d.errs {
		if takes&e.arg != 0 {
			return &Error{Code: CodeInvalidArgument, Message: e.msg}
		}
	}
	return nil
}

const errArgsNotMap = "klock: request args must be a map"

func malformed(err error) string {
	return "klock: request body is not valid msgpack: " + err.Error()
}

// requestDecoder carries one request's decoding state.
type requestDecoder struct {
	r    msgpackwire.Reader
	args *Args
	errs []argError // argument errors, in frame order
}

// argError is a wrong-typed argument; it matters only if the op takes arg.
type argError struct {
	arg Arg
	msg string
}

// key reads a map key. A key that is not a string is skipped together with
// its value, and isKey is false.
func (d *requestDecoder) key() (key []byte, isKey bool, err error) {
	c, err := d.r.Peek()
	if err != nil {
		return nil, false, err
	}
	if !msgpackwire.IsStr(c) {
		if err := d.r.Skip(); err != nil {
			return nil, false, err
		}
		return nil, false, d.r.Skip()
	}
	key, err = d.r.StrBytes()
	return key, err == nil, err
}

// op reads the op name; the names of known operations are not copied.
func (d *requestDecoder) op() (string, error) {
	b, err := d.r.StrBytes()
	if err != nil {
		return "", err
	}
	for _, op := range Ops {
		if string(b) == op {
			return op, nil
		}
	}
	return d.r.StringOf(b), nil
}

// id reads the request id; msg is set when it is not a positive integer.
func (d *requestDecoder) id() (id uint64, msg string, err error) {
	c, err := d.r.Peek()
	if err != nil {
		return 0, "", err
	}
	if c == msgpcode.Nil {
		return 0, "", d.r.Skip()
	}
	if !msgpackwire.IsInt(c) {
		return 0, fmt.Sprintf("klock: request id must be a positive integer, got %s", msgpackwire.KindName(c)), d.r.Skip()
	}
	u, neg, err := d.r.Integer()
	if err == nil && (neg || u == 0) {
		return 0, "klock: request id must be a positive integer, got 0 or a negative number", nil
	}
	return u, "", err
}

// decodeArgs reads the args map. msg is set when args is not a map; err
// only when the msgpack itself is malformed.
func (d *requestDecoder) decodeArgs() (msg string, err error) {
	c, err := d.r.Peek()
	if err != nil {
		return "", err
	}
	if c == msgpcode.Nil {
		return "", d.r.Skip()
	}
	if !msgpackwire.IsMap(c) {
		return errArgsNotMap, d.r.Skip()
	}
	n, err := d.r.MapLen()
	if err != nil {
		return "", err
	}
	for i := 0; i < n; i++ {
		key, isKey, err := d.key()
		if err != nil {
			return "", err
		}
		if !isKey {
			continue
		}
		spec, known := lookupArg(key)
		if !known {
			if err := d.r.Skip(); err != nil {
				return "", err
			}
			continue
		}
		if err := d.arg(spec); err != nil {
			return "", err
		}
	}
	return "", nil
}

// fail records a wrong-typed argument.
func (d *requestDecoder) fail(arg Arg, format string, a ...any) {
	d.errs = append(d.errs, argError{arg: arg, msg: fmt.Sprintf(format, a...)})
}

// arg reads one known argument.
func (d *requestDecoder) arg(spec argSpec) error {
	c, err := d.r.Peek()
	if err != nil {
		return err
	}
	if c == msgpcode.Nil {
		return d.r.Skip()
	}
	switch spec.kind {
	case kindString:
		s, ok, err := d.stringArg(c, spec.arg, ArgName{-1, spec.key})
		if err != nil || !ok {
			return err
		}
		*d.args.stringField(spec.arg) = s
	case kindUint:
		if !msgpackwire.IsInt(c) {
			d.fail(spec.arg, "klock: argument %s must be a non-negative integer, got %s", spec.key, msgpackwire.KindName(c))
			return d.r.Skip()
		}
		u, neg, err := d.r.Integer()
		switch {
		case err != nil:
			return err
		case neg:
			d.fail(spec.arg, "klock: argument %s must not be negative", spec.key)
			return nil
		case u > math.MaxInt64:
			d.fail(spec.arg, "klock: argument %s is out of range (%d); the maximum is %d", spec.key, u, int64(math.MaxInt64))
			return nil
		}
		*d.args.uintField(spec.arg) = int64(u)
	case kindIntents:
		ok, err := d.intents(c)
		if err != nil || !ok {
			return err
		}
	}
	d.args.present |= spec.arg
	return nil
}

// stringArg reads a string argument; ok is false when it was recorded as
// an error instead.
func (d *requestDecoder) stringArg(c byte, arg Arg, name ArgName) (s string, ok bool, err error) {
	if !msgpackwire.IsStr(c) {
		d.fail(arg, "klock: argument %s must be a string, got %s", name, msgpackwire.KindName(c))
		return "", false, d.r.Skip()
	}
	b, err := d.r.StrBytes()
	if err != nil {
		return "", false, err
	}
	if !utf8.Valid(b) {
		d.fail(arg, "klock: argument %s must be valid UTF-8", name)
		return "", false, nil
	}
	return d.r.StringOf(b), true, nil
}

// ArgName names an argument in an error: Key, or for Intent >= 0 that key
// of intents[Intent]. It is formatted only when there is an error to
// report (the decoder's and the engine's checks): formatted for every field
// of every intent, the names were ~10% of all klockd allocated while a
// million leases were taken with acquire_many (127 of 1,270 MB), all of it
// small garbage.
type ArgName struct {
	Intent int
	Key    string
}

func (n ArgName) String() string {
	if n.Intent < 0 {
		return n.Key
	}
	return "intents[" + strconv.Itoa(n.Intent) + "]." + n.Key
}

// intents reads acquire_many's intents; ok is false when something in them
// was recorded as an error.
func (d *requestDecoder) intents(c byte) (ok bool, err error) {
	if !(msgpackwire.IsArray(c)) {
		d.fail(ArgIntents, "klock: argument intents must be an array of maps, got %s", msgpackwire.KindName(c))
		return false, d.r.Skip()
	}
	n, err := d.r.ArrayLen()
	if err != nil {
		return false, err
	}
	if n > MaxIntents {
		for i := 0; i < n; i++ {
			if err := d.r.Skip(); err != nil {
				return false, err
			}
		}
		d.fail(ArgIntents, "klock: argument intents has %d entries; at most %d are allowed", n, MaxIntents)
		return false, nil
	}
	a := d.args
	a.Intents = a.Intents[:0]
	before := len(d.errs)
	for i := 0; i < n; i++ {
		c, err := d.r.Peek()
		if err != nil {
			return false, err
		}
		if !msgpackwire.IsMap(c) {
			d.fail(ArgIntents, "klock: argument intents[%d] must be a map, got %s", i, msgpackwire.KindName(c))
			if err := d.r.Skip(); err != nil {
				return false, err
			}
			continue
		}
		in, err := d.intent(i)
		if err != nil {
			return false, err
		}
		a.Intents = append(a.Intents, in)
	}
	return len(d.errs) == before, nil
}

// intent reads one element of intents.
func (d *requestDecoder) intent(i int) (Intent, error) {
	var in Intent
	n, err := d.r.MapLen()
	if err != nil {
		return in, err
	}
	for j := 0; j < n; j++ {
		key, isKey, err := d.key()
		if err != nil {
			return in, err
		}
		var field *string
		var name string
		switch {
		case !isKey:
			continue
		case string(key) == "resource_type":
			field, name = &in.ResourceType, "resource_type"
		case string(key) == "resource_path":
			field, name = &in.ResourcePath, "resource_path"
		case string(key) == "predicate":
			field, name = &in.Predicate, "predicate"
		case string(key) == "client_path":
			field, name = &in.ClientPath, "client_path"
		default:
			if err := d.r.Skip(); err != nil {
				return in, err
			}
			continue
		}
		c, err := d.r.Peek()
		if err != nil {
			return in, err
		}
		if c == msgpcode.Nil {
			if err := d.r.Skip(); err != nil {
				return in, err
			}
			continue
		}
		s, ok, err := d.stringArg(c, ArgIntents, ArgName{i, name})
		if err != nil {
			return in, err
		}
		if ok {
			*field = s
		}
	}
	return in, nil
}

// AppendRequest appends one request frame to dst: id, op and the arguments
// marked present in args (nil for none).
func AppendRequest(dst []byte, id uint64, op string, args *Args) ([]byte, error) {
	dst, off := beginFrame(dst)
	n := 2
	if args != nil {
		n = 3
	}
	dst = msgpackwire.AppendMapLen(dst, n)
	dst = msgpackwire.AppendStr(dst, "id")
	dst = msgpackwire.AppendUint(dst, id)
	dst = msgpackwire.AppendStr(dst, "op")
	dst = msgpackwire.AppendStr(dst, op)
	if args == nil {
		return endFrame(dst, off), nil
	}
	dst = msgpackwire.AppendStr(dst, "args")
	count := 0
	for _, s := range argSpecs {
		if args.Has(s.arg) {
			count++
		}
	}
	dst = msgpackwire.AppendMapLen(dst, count)
	for _, s := range argSpecs {
		if !args.Has(s.arg) {
			continue
		}
		dst = msgpackwire.AppendStr(dst, s.key)
		switch s.kind {
		case kindString:
			dst = msgpackwire.AppendStr(dst, *args.stringField(s.arg))
		case kindUint:
			dst = msgpackwire.AppendInt(dst, *args.uintField(s.arg))
		case kindIntents:
			dst = msgpackwire.AppendArrayLen(dst, len(args.Intents))
			for _, in := range args.Intents {
				if in.ClientPath == "" {
					dst = msgpackwire.AppendMapLen(dst, 3)
				} else {
					dst = msgpackwire.AppendMapLen(dst, 4)
				}
				dst = msgpackwire.AppendStr(dst, "resource_type")
				dst = msgpackwire.AppendStr(dst, in.ResourceType)
				dst = msgpackwire.AppendStr(dst, "resource_path")
				dst = msgpackwire.AppendStr(dst, in.ResourcePath)
				dst = msgpackwire.AppendStr(dst, "predicate")
				dst = msgpackwire.AppendStr(dst, in.Predicate)
				if in.ClientPath != "" {
					dst = msgpackwire.AppendStr(dst, "client_path")
					dst = msgpackwire.AppendStr(dst, in.ClientPath)
				}
			}
		}
	}
	if len(dst)-off-HeaderSize > math.MaxUint32 {
		return dst[:off], fmt.Errorf("klock: %s request of %d bytes is too large for a frame", op, len(dst)-off-HeaderSize)
	}
	return endFrame(dst, off), nil
}
