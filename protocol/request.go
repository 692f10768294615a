package protocol

import (
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5/msgpcode"
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
	d := requestDecoder{r: reader{b: body}, args: &req.Args}
	n, err := d.r.mapLen()
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
			c, err = d.r.peek()
			switch {
			case err != nil:
			case c == msgpcode.Nil:
				d.r.off++
			case !isStringCode(c):
				msg = fmt.Sprintf("klock: request op must be a string, got %s", kindName(c))
				err = d.r.skip()
			default:
				req.Op, err = d.op()
				haveOp = true
			}
		case "args":
			msg, err = d.decodeArgs()
		default:
			err = d.r.skip()
		}
		if err != nil {
			badReq, broken = malformed(err), true
		} else if msg != "" && badReq == "" {
			badReq = msg
		}
	}
	switch {
	case badReq != "":
	case d.r.rest() != 0:
		badReq = "klock: request body holds bytes after its msgpack map"
	case req.ID == 0:
		badReq = "klock: request has no id; id must be a positive integer"
	case !haveOp:
		badReq = "klock: request has no op; op must be a string naming an operation"
	}
	if badReq != "" {
		return &Error{Code: CodeBadRequest, Message: badReq}
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
	r    reader
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
	c, err := d.r.peek()
	if err != nil {
		return nil, false, err
	}
	if !isStringCode(c) {
		if err := d.r.skip(); err != nil {
			return nil, false, err
		}
		return nil, false, d.r.skip()
	}
	key, err = d.r.strBytes()
	return key, err == nil, err
}

// op reads the op name; the names of known operations are not copied.
func (d *requestDecoder) op() (string, error) {
	b, err := d.r.strBytes()
	if err != nil {
		return "", err
	}
	for _, op := range Ops {
		if string(b) == op {
			return op, nil
		}
	}
	return d.r.strOf(b), nil
}

// id reads the request id; msg is set when it is not a positive integer.
func (d *requestDecoder) id() (id uint64, msg string, err error) {
	c, err := d.r.peek()
	if err != nil {
		return 0, "", err
	}
	if c == msgpcode.Nil {
		d.r.off++
		return 0, "", nil
	}
	if !isIntCode(c) {
		return 0, fmt.Sprintf("klock: request id must be a positive integer, got %s", kindName(c)), d.r.skip()
	}
	u, neg, err := d.r.integer()
	if err == nil && (neg || u == 0) {
		return 0, "klock: request id must be a positive integer, got 0 or a negative number", nil
	}
	return u, "", err
}

// decodeArgs reads the args map. msg is set when args is not a map; err
// only when the msgpack itself is malformed.
func (d *requestDecoder) decodeArgs() (msg string, err error) {
	c, err := d.r.peek()
	if err != nil {
		return "", err
	}
	if c == msgpcode.Nil {
		d.r.off++
		return "", nil
	}
	if !isMapCode(c) {
		return errArgsNotMap, d.r.skip()
	}
	n, err := d.r.mapLen()
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
			if err := d.r.skip(); err != nil {
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
	c, err := d.r.peek()
	if err != nil {
		return err
	}
	if c == msgpcode.Nil {
		d.r.off++
		return nil
	}
	switch spec.kind {
	case kindString:
		s, ok, err := d.stringArg(c, spec.arg, spec.key)
		if err != nil || !ok {
			return err
		}
		*d.args.stringField(spec.arg) = s
	case kindUint:
		if !isIntCode(c) {
			d.fail(spec.arg, "klock: argument %s must be a non-negative integer, got %s", spec.key, kindName(c))
			return d.r.skip()
		}
		u, neg, err := d.r.integer()
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
func (d *requestDecoder) stringArg(c byte, arg Arg, name string) (s string, ok bool, err error) {
	if !isStringCode(c) {
		d.fail(arg, "klock: argument %s must be a string, got %s", name, kindName(c))
		return "", false, d.r.skip()
	}
	b, err := d.r.strBytes()
	if err != nil {
		return "", false, err
	}
	if !utf8.Valid(b) {
		d.fail(arg, "klock: argument %s must be valid UTF-8", name)
		return "", false, nil
	}
	return d.r.strOf(b), true, nil
}

// intents reads acquire_many's intents; ok is false when something in them
// was recorded as an error.
func (d *requestDecoder) intents(c byte) (ok bool, err error) {
	if !(msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32) {
		d.fail(ArgIntents, "klock: argument intents must be an array of maps, got %s", kindName(c))
		return false, d.r.skip()
	}
	n, err := d.r.arrayLen()
	if err != nil {
		return false, err
	}
	if n > MaxIntents {
		for i := 0; i < n; i++ {
			if err := d.r.skip(); err != nil {
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
		c, err := d.r.peek()
		if err != nil {
			return false, err
		}
		if !isMapCode(c) {
			d.fail(ArgIntents, "klock: argument intents[%d] must be a map, got %s", i, kindName(c))
			if err := d.r.skip(); err != nil {
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
	n, err := d.r.mapLen()
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
			if err := d.r.skip(); err != nil {
				return in, err
			}
			continue
		}
		c, err := d.r.peek()
		if err != nil {
			return in, err
		}
		if c == msgpcode.Nil {
			d.r.off++
			continue
		}
		s, ok, err := d.stringArg(c, ArgIntents, fmt.Sprintf("intents[%d].%s", i, name))
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
	dst = appendMapLen(dst, n)
	dst = appendStr(dst, "id")
	dst = appendUint(dst, id)
	dst = appendStr(dst, "op")
	dst = appendStr(dst, op)
	if args == nil {
		return endFrame(dst, off), nil
	}
	dst = appendStr(dst, "args")
	count := 0
	for _, s := range argSpecs {
		if args.Has(s.arg) {
			count++
		}
	}
	dst = appendMapLen(dst, count)
	for _, s := range argSpecs {
		if !args.Has(s.arg) {
			continue
		}
		dst = appendStr(dst, s.key)
		switch s.kind {
		case kindString:
			dst = appendStr(dst, *args.stringField(s.arg))
		case kindUint:
			dst = appendInt(dst, *args.uintField(s.arg))
		case kindIntents:
			dst = appendArrayLen(dst, len(args.Intents))
			for _, in := range args.Intents {
				if in.ClientPath == "" {
					dst = appendMapLen(dst, 3)
				} else {
					dst = appendMapLen(dst, 4)
				}
				dst = appendStr(dst, "resource_type")
				dst = appendStr(dst, in.ResourceType)
				dst = appendStr(dst, "resource_path")
				dst = appendStr(dst, in.ResourcePath)
				dst = appendStr(dst, "predicate")
				dst = appendStr(dst, in.Predicate)
				if in.ClientPath != "" {
					dst = appendStr(dst, "client_path")
					dst = appendStr(dst, in.ClientPath)
				}
			}
		}
	}
	if len(dst)-off-HeaderSize > math.MaxUint32 {
		return dst[:off], fmt.Errorf("klock: %s request of %d bytes is too large for a frame", op, len(dst)-off-HeaderSize)
	}
	return endFrame(dst, off), nil
}
