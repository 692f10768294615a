package protocol

import (
	"errors"
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

var errTruncated = errors.New("msgpack value runs past the end of the frame")

// DecodeRequest decodes a request body into req, reusing req's storage.
// It returns a *Error with CodeBadRequest when the body is not a msgpack map,
// id is missing or not a positive integer, op is missing or not a string, or
// args is present and not a map; and CodeInvalidArgument when an argument has
// the wrong wire type, naming the argument. req.ID is set whenever the id
// could be read, so the error can be answered with it. A nil id, op or
// argument counts as absent.
func DecodeRequest(body []byte, req *Request) error {
	req.ID, req.Op = 0, ""
	req.Args.Reset()
	d := getDecoder(body)
	defer d.release()

	var badReq, argErr string
	n, err := mapLen(d)
	if err != nil {
		return &Error{Code: CodeBadRequest, Message: "klock: request body is not a msgpack map"}
	}
	// Keep reading after a bad value, so the id can still be found and
	// answered; stop only when the msgpack itself is broken.
	var haveOp, broken bool
	for i := 0; i < n && !broken; i++ {
		key, isKey, err := decodeKey(d)
		if err != nil {
			badReq, broken = malformed(err), true
			break
		}
		if !isKey {
			continue
		}
		var msg string
		switch key {
		case "id":
			req.ID, msg, err = decodeID(d)
		case "op":
			var c byte
			c, err = d.dec.PeekCode()
			switch {
			case err != nil:
			case c == msgpcode.Nil:
				err = d.dec.Skip()
			case !isStringCode(c):
				msg = fmt.Sprintf("klock: request op must be a string, got %s", kindName(c))
				err = d.dec.Skip()
			default:
				req.Op, err = d.decodeString()
				haveOp = true
			}
		case "args":
			var m string
			m, err = decodeArgs(d, &req.Args)
			if m == errArgsNotMap {
				msg = m
			} else if m != "" && argErr == "" {
				argErr = m
			}
		default:
			err = d.dec.Skip()
		}
		if err != nil {
			badReq, broken = malformed(err), true
		} else if msg != "" && badReq == "" {
			badReq = msg
		}
	}
	switch {
	case badReq != "":
	case d.r.Len() != 0:
		badReq = "klock: request body holds bytes after its msgpack map"
	case req.ID == 0:
		badReq = "klock: request has no id; id must be a positive integer"
	case !haveOp:
		badReq = "klock: request has no op; op must be a string naming an operation"
	}
	if badReq != "" {
		return &Error{Code: CodeBadRequest, Message: badReq}
	}
	if argErr != "" {
		return &Error{Code: CodeInvalidArgument, Message: argErr}
	}
	return nil
}

const errArgsNotMap = "klock: request args must be a map"

func malformed(err error) string {
	return "klock: request body is not valid msgpack: " + err.Error()
}

// mapLen reads a map header and fails for anything else.
func mapLen(d *decoder) (int, error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return 0, err
	}
	if !isMapCode(c) {
		return 0, fmt.Errorf("expected a map, got %s", kindName(c))
	}
	n, err := d.dec.DecodeMapLen()
	if err != nil {
		return 0, err
	}
	// Every entry takes at least two bytes: a longer declaration is a lie.
	if n > d.r.Len()/2 {
		return 0, errTruncated
	}
	return n, nil
}

// decodeKey reads a map key. A key that is not a string is skipped together
// with its value, and isKey is false.
func decodeKey(d *decoder) (key string, isKey bool, err error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return "", false, err
	}
	if !isStringCode(c) {
		if err := d.dec.Skip(); err != nil {
			return "", false, err
		}
		return "", false, d.dec.Skip()
	}
	key, err = d.decodeString()
	return key, err == nil, err
}

// decodeID reads the request id; msg is set when it is not a positive integer.
func decodeID(d *decoder) (id uint64, msg string, err error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return 0, "", err
	}
	switch {
	case c == msgpcode.Nil:
		return 0, "", d.dec.Skip()
	case isUintCode(c):
		id, err = d.dec.DecodeUint64()
	case isIntCode(c):
		var v int64
		v, err = d.dec.DecodeInt64()
		if v > 0 {
			id = uint64(v)
		}
	default:
		return 0, fmt.Sprintf("klock: request id must be a positive integer, got %s", kindName(c)), d.dec.Skip()
	}
	if err == nil && id == 0 {
		msg = "klock: request id must be a positive integer, got 0 or a negative number"
	}
	return id, msg, err
}

// decodeArgs reads the args map into a. msg names the first argument of the
// wrong type; err is set only when the msgpack itself is malformed.
func decodeArgs(d *decoder, a *Args) (msg string, err error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return "", err
	}
	if c == msgpcode.Nil {
		return "", d.dec.Skip()
	}
	if !isMapCode(c) {
		return errArgsNotMap, d.dec.Skip()
	}
	n, err := mapLen(d)
	if err != nil {
		return "", err
	}
	for i := 0; i < n; i++ {
		key, isKey, err := decodeKey(d)
		if err != nil {
			return "", err
		}
		if !isKey {
			continue
		}
		spec, known := lookupArg(key)
		if !known {
			if err := d.dec.Skip(); err != nil {
				return "", err
			}
			continue
		}
		m, err := decodeArg(d, a, spec, key)
		if err != nil {
			return "", err
		}
		if m != "" && msg == "" {
			msg = m
		}
	}
	return msg, nil
}

// decodeArg reads one known argument; name is how a message refers to it.
func decodeArg(d *decoder, a *Args, spec argSpec, name string) (msg string, err error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return "", err
	}
	if c == msgpcode.Nil {
		return "", d.dec.Skip()
	}
	switch spec.kind {
	case kindString:
		s, m, err := decodeStringArg(d, c, name)
		if err != nil || m != "" {
			return m, err
		}
		*a.stringField(spec.arg) = s
	case kindUint:
		v, m, err := decodeUintArg(d, c, name)
		if err != nil || m != "" {
			return m, err
		}
		*a.uintField(spec.arg) = v
	case kindIntents:
		m, err := decodeIntents(d, c, a)
		if err != nil || m != "" {
			return m, err
		}
	}
	a.present |= spec.arg
	return "", nil
}

func decodeStringArg(d *decoder, c byte, name string) (string, string, error) {
	if !isStringCode(c) {
		return "", fmt.Sprintf("klock: argument %s must be a string, got %s", name, kindName(c)), d.dec.Skip()
	}
	s, err := d.decodeString()
	if err != nil {
		return "", "", err
	}
	if !utf8.ValidString(s) {
		return "", fmt.Sprintf("klock: argument %s must be valid UTF-8", name), nil
	}
	return s, "", nil
}

func decodeUintArg(d *decoder, c byte, name string) (int64, string, error) {
	switch {
	case isUintCode(c):
		v, err := d.dec.DecodeUint64()
		if err != nil {
			return 0, "", err
		}
		if v > math.MaxInt64 {
			return 0, fmt.Sprintf("klock: argument %s is out of range (%d); the maximum is %d", name, v, int64(math.MaxInt64)), nil
		}
		return int64(v), "", nil
	case isIntCode(c):
		v, err := d.dec.DecodeInt64()
		if err != nil {
			return 0, "", err
		}
		if v < 0 {
			return 0, fmt.Sprintf("klock: argument %s must not be negative, got %d", name, v), nil
		}
		return v, "", nil
	default:
		return 0, fmt.Sprintf("klock: argument %s must be a non-negative integer, got %s", name, kindName(c)), d.dec.Skip()
	}
}

func decodeIntents(d *decoder, c byte, a *Args) (string, error) {
	if !(msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32) {
		return fmt.Sprintf("klock: argument intents must be an array of maps, got %s", kindName(c)), d.dec.Skip()
	}
	n, err := d.dec.DecodeArrayLen()
	if err != nil {
		return "", err
	}
	if n > MaxIntents {
		for i := 0; i < n; i++ {
			if err := d.dec.Skip(); err != nil {
				return "", err
			}
		}
		return fmt.Sprintf("klock: argument intents has %d entries; at most %d are allowed", n, MaxIntents), nil
	}
	a.Intents = a.Intents[:0]
	var msg string
	for i := 0; i < n; i++ {
		c, err := d.dec.PeekCode()
		if err != nil {
			return "", err
		}
		if !isMapCode(c) {
			if msg == "" {
				msg = fmt.Sprintf("klock: argument intents[%d] must be a map, got %s", i, kindName(c))
			}
			if err := d.dec.Skip(); err != nil {
				return "", err
			}
			continue
		}
		m, err := decodeIntent(d, i, a)
		if err != nil {
			return "", err
		}
		if msg == "" {
			msg = m
		}
	}
	return msg, nil
}

func decodeIntent(d *decoder, i int, a *Args) (string, error) {
	n, err := mapLen(d)
	if err != nil {
		return "", err
	}
	var in Intent
	var msg string
	for j := 0; j < n; j++ {
		key, isKey, err := decodeKey(d)
		if err != nil {
			return "", err
		}
		var field *string
		switch {
		case !isKey:
			continue
		case key == "resource_type":
			field = &in.ResourceType
		case key == "resource_path":
			field = &in.ResourcePath
		case key == "predicate":
			field = &in.Predicate
		default:
			if err := d.dec.Skip(); err != nil {
				return "", err
			}
			continue
		}
		c, err := d.dec.PeekCode()
		if err != nil {
			return "", err
		}
		if c == msgpcode.Nil {
			if err := d.dec.Skip(); err != nil {
				return "", err
			}
			continue
		}
		s, m, err := decodeStringArg(d, c, fmt.Sprintf("intents[%d].%s", i, key))
		if err != nil {
			return "", err
		}
		if m != "" && msg == "" {
			msg = m
		}
		*field = s
	}
	a.Intents = append(a.Intents, in)
	return msg, nil
}

// AppendRequest appends one request frame to dst: id, op and the arguments
// marked present in args (nil for none).
func AppendRequest(dst []byte, id uint64, op string, args *Args) ([]byte, error) {
	dst, off := beginFrame(dst)
	e := getEncoder(dst)
	err := encodeRequest(e, id, op, args)
	dst = e.done()
	if err != nil {
		return dst[:off], err
	}
	return endFrame(dst, off), nil
}

func encodeRequest(e *encoder, id uint64, op string, args *Args) error {
	enc := e.enc
	n := 2
	if args != nil {
		n = 3
	}
	if err := enc.EncodeMapLen(n); err != nil {
		return err
	}
	_ = enc.EncodeString("id")
	_ = enc.EncodeUint(id)
	_ = enc.EncodeString("op")
	_ = enc.EncodeString(op)
	if args == nil {
		return nil
	}
	_ = enc.EncodeString("args")
	count := 0
	for _, s := range argSpecs {
		if args.Has(s.arg) {
			count++
		}
	}
	_ = enc.EncodeMapLen(count)
	for _, s := range argSpecs {
		if !args.Has(s.arg) {
			continue
		}
		_ = enc.EncodeString(s.key)
		switch s.kind {
		case kindString:
			_ = enc.EncodeString(*args.stringField(s.arg))
		case kindUint:
			_ = enc.EncodeInt(*args.uintField(s.arg))
		case kindIntents:
			_ = enc.EncodeArrayLen(len(args.Intents))
			for _, in := range args.Intents {
				_ = enc.EncodeMapLen(3)
				_ = enc.EncodeString("resource_type")
				_ = enc.EncodeString(in.ResourceType)
				_ = enc.EncodeString("resource_path")
				_ = enc.EncodeString(in.ResourcePath)
				_ = enc.EncodeString("predicate")
				_ = enc.EncodeString(in.Predicate)
			}
		}
	}
	return nil
}
