package protocol

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// body marshals v (a map) as a request body.
func body(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	require.NoError(t, err)
	return b
}

func TestRequestRoundTrip(t *testing.T) {
	var args Args
	args.AgentID, args.SessionID = "agent-senior", "s1"
	args.ResourceType, args.ResourcePath, args.Predicate = "FILE", "/src/auth.ts", "MUTATES"
	args.TTL, args.WaitTimeout, args.Idem, args.Bind = 60000, 250, "k1", "process"
	args.ClientPath = "/wt/src/auth.ts"
	args.Intents = []Intent{{"FILE", "/a", "CONSUMES", ""}, {"SYMBOL", "pkg.F", "PROVIDES", ""}, {"FILE", "/r/b", "MUTATES", "/wt/b"}}
	for _, a := range []Arg{ArgAgentID, ArgSessionID, ArgResourceType, ArgResourcePath, ArgPredicate, ArgTTL, ArgWaitTimeout, ArgIdem, ArgIntents, ArgBind, ArgClientPath} {
		args.Set(a)
	}
	frame, err := AppendRequest(nil, 42, OpAcquire, &args)
	require.NoError(t, err)

	got, err := ReadFrame(bytes.NewReader(frame), nil, DefaultMaxFrame)
	require.NoError(t, err)
	var req Request
	require.NoError(t, DecodeRequest(got, &req))
	assert.Equal(t, uint64(42), req.ID)
	assert.Equal(t, OpAcquire, req.Op)
	assert.Equal(t, args, req.Args)
	assert.False(t, req.Args.Has(ArgPriority))
}

func TestDecodeRequestErrors(t *testing.T) {
	tests := []struct {
		name    string
		body    []byte
		code    Code
		id      uint64
		message string
	}{
		{"not a map", body(t, []int{1, 2}), CodeBadRequest, 0, "not a msgpack map"},
		{"garbage", []byte{0xc1, 0x00, 0xff}, CodeBadRequest, 0, "not a msgpack map"},
		{"truncated map", []byte{0x82, 0xa2, 'i', 'd', 0x01}, CodeBadRequest, 1, "not valid msgpack"},
		{"no id", body(t, map[string]any{"op": "hello"}), CodeBadRequest, 0, "no id"},
		{"zero id", body(t, map[string]any{"id": 0, "op": "hello"}), CodeBadRequest, 0, "positive integer"},
		{"negative id", body(t, map[string]any{"id": -3, "op": "hello"}), CodeBadRequest, 0, "positive integer"},
		{"string id", body(t, map[string]any{"id": "7", "op": "hello"}), CodeBadRequest, 0, "got a string"},
		{"no op", body(t, map[string]any{"id": 5}), CodeBadRequest, 5, "no op"},
		{"op not string", body(t, map[string]any{"id": 5, "op": 3}), CodeBadRequest, 5, "op must be a string"},
		{"args not map", body(t, map[string]any{"id": 5, "op": "acquire", "args": "x"}), CodeBadRequest, 5, "args must be a map"},
		{"ttl string", body(t, map[string]any{"id": 6, "op": "acquire", "args": map[string]any{"ttl": "60s"}}), CodeInvalidArgument, 6, "ttl must be a non-negative integer, got a string"},
		{"ttl negative", body(t, map[string]any{"id": 6, "op": "acquire", "args": map[string]any{"ttl": -1}}), CodeInvalidArgument, 6, "ttl must not be negative"},
		{"ttl float", body(t, map[string]any{"id": 6, "op": "acquire", "args": map[string]any{"ttl": 1.5}}), CodeInvalidArgument, 6, "got a float"},
		{"ttl too big", body(t, map[string]any{"id": 6, "op": "acquire", "args": map[string]any{"ttl": uint64(1 << 63)}}), CodeInvalidArgument, 6, "out of range"},
		{"agent int", body(t, map[string]any{"id": 6, "op": "acquire", "args": map[string]any{"agent_id": 12}}), CodeInvalidArgument, 6, "agent_id must be a string"},
		{"bind bool", body(t, map[string]any{"id": 6, "op": "acquire_many", "args": map[string]any{"bind": true}}), CodeInvalidArgument, 6, "bind must be a string"},
		{"intents not array", body(t, map[string]any{"id": 6, "op": "acquire_many", "args": map[string]any{"intents": map[string]any{}}}), CodeInvalidArgument, 6, "intents must be an array"},
		{"intent not map", body(t, map[string]any{"id": 6, "op": "acquire_many", "args": map[string]any{"intents": []any{1}}}), CodeInvalidArgument, 6, "intents[0] must be a map"},
		{"intent field type", body(t, map[string]any{"id": 6, "op": "acquire_many", "args": map[string]any{"intents": []any{map[string]any{"predicate": true}}}}), CodeInvalidArgument, 6, "intents[0].predicate must be a string"},
		{"too many intents", body(t, map[string]any{"id": 6, "op": "acquire_many", "args": map[string]any{"intents": make([]map[string]any, 65)}}), CodeInvalidArgument, 6, "at most 64"},
		{"invalid utf8", body(t, map[string]any{"id": 6, "op": "acquire", "args": map[string]any{"agent_id": "a\xffb"}}), CodeInvalidArgument, 6, "valid UTF-8"},
		{"trailing bytes", append(body(t, map[string]any{"id": 8, "op": "hello"}), 0x01), CodeBadRequest, 8, "after its msgpack map"},
		{"huge map len", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}, CodeBadRequest, 0, "not a msgpack map"},
		{"huge string len", []byte{0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, 'i'}, CodeBadRequest, 0, "not valid msgpack"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			err := DecodeRequest(tt.body, &req)
			var perr *Error
			require.True(t, errors.As(err, &perr), "DecodeRequest(%x) = %v; want a *Error", tt.body, err)
			assert.Equal(t, tt.code, perr.Code)
			assert.Contains(t, perr.Message, tt.message)
			assert.True(t, strings.HasPrefix(perr.Message, "klock: "), perr.Message)
			assert.Equal(t, tt.id, req.ID)
		})
	}
}

func TestDecodeRequestLenient(t *testing.T) {
	// Unknown keys at both levels, non-string keys and nil values are ignored;
	// a nil args is no args.
	b := body(t, map[any]any{"id": uint8(9), "op": "release", 7: "x", "extra": []int{1},
		"args": map[any]any{"lease_id": "L", "future": map[string]int{"a": 1}, "ttl": nil, 3: 4}})
	var req Request
	require.NoError(t, DecodeRequest(b, &req))
	assert.Equal(t, uint64(9), req.ID)
	assert.Equal(t, "L", req.Args.LeaseID)
	assert.True(t, req.Args.Has(ArgLeaseID))
	assert.False(t, req.Args.Has(ArgTTL))

	require.NoError(t, DecodeRequest(body(t, map[string]any{"id": 1, "op": "stats", "args": nil}), &req))
	assert.Equal(t, OpStats, req.Op)

	// bind is an argument of acquire and acquire_many only.
	require.NoError(t, DecodeRequest(body(t, map[string]any{"id": 2, "op": "release", "args": map[string]any{"lease_id": "L", "bind": 5}}), &req))
	assert.False(t, req.Args.Has(ArgBind))
}

func TestReadFrame(t *testing.T) {
	frame := AppendFrame(nil, []byte{0x80})
	got, err := ReadFrame(bytes.NewReader(frame), make([]byte, 0, 16), 16)
	require.NoError(t, err)
	assert.Equal(t, []byte{0x80}, got)

	_, err = ReadFrame(bytes.NewReader([]byte{0, 0, 0, 0}), nil, 16)
	var ferr *FrameError
	require.ErrorAs(t, err, &ferr)
	assert.Contains(t, ferr.Error(), "length is 0")

	_, err = ReadFrame(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff}), nil, 16)
	require.ErrorAs(t, err, &ferr)
	assert.Contains(t, ferr.Error(), "over the maximum of 16 bytes")

	_, err = ReadFrame(bytes.NewReader(nil), nil, 16)
	assert.ErrorIs(t, err, io.EOF)
	_, err = ReadFrame(bytes.NewReader([]byte{0, 0, 0, 4, 0x80}), nil, 16)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

func TestResponseRoundTrip(t *testing.T) {
	g := Grant{Success: true, LeaseID: "L1", AgentID: "a", SessionID: "s", Resource: "FILE:/x", Predicate: "MUTATES", AcquiredAt: 1, ExpiresAt: 2, Fence: 3}
	frame, err := AppendResult(nil, 77, g)
	require.NoError(t, err)
	b, err := ReadFrame(bytes.NewReader(frame), nil, DefaultMaxFrame)
	require.NoError(t, err)
	var resp Response
	require.NoError(t, DecodeResponse(b, &resp))
	assert.Equal(t, uint64(77), resp.ID)
	assert.True(t, resp.OK)
	var got AcquireResult
	require.NoError(t, DecodeResult(resp.Result, &got))
	assert.Equal(t, g.LeaseID, got.LeaseID)
	assert.Equal(t, g.Fence, got.Fence)

	frame = AppendError(nil, 78, CodeNotFound, "klock: lease L1 is not active")
	b, err = ReadFrame(bytes.NewReader(frame), nil, DefaultMaxFrame)
	require.NoError(t, err)
	require.NoError(t, DecodeResponse(b, &resp))
	assert.False(t, resp.OK)
	assert.Equal(t, &Error{Code: CodeNotFound, Message: "klock: lease L1 is not active"}, resp.Error)
}

// TestLookupArgFindsEveryKey: every argument key is found, as itself, and
// keys that are not arguments (a key's prefix, a key with its slot but
// another spelling, the empty key) are not.
func TestLookupArgFindsEveryKey(t *testing.T) {
	for _, s := range argSpecs {
		got, ok := lookupArg([]byte(s.key))
		if !ok || got != s {
			t.Errorf("lookupArg(%q) = %+v, %v; want %+v", s.key, got, ok, s)
		}
		for _, other := range []string{s.key[:len(s.key)-1], s.key[:1] + "x" + s.key[2:], s.key + s.key[len(s.key)-1:]} {
			if got, ok := lookupArg([]byte(other)); ok {
				t.Errorf("lookupArg(%q) = %+v; want no argument", other, got)
			}
		}
	}
	if _, ok := lookupArg(nil); ok {
		t.Error("lookupArg(empty) found an argument")
	}
}

// TestDecodeIntentsAllocs: decoding an acquire_many allocates the same
// whatever the number of intents (the strings share one copy of the body,
// and the intents slice is reused): no per-field garbage, such as error
// names formatted in case one is needed.
func TestDecodeIntentsAllocs(t *testing.T) {
	allocs := func(n int) float64 {
		var args Args
		args.AgentID, args.SessionID = "a", "s"
		for i := range n {
			args.Intents = append(args.Intents, Intent{"FILE", "/held/" + strings.Repeat("x", i%7), "MUTATES", ""})
		}
		args.Set(ArgAgentID)
		args.Set(ArgSessionID)
		args.Set(ArgIntents)
		frame, err := AppendRequest(nil, 1, OpAcquireMany, &args)
		require.NoError(t, err)
		body, err := ReadFrame(bytes.NewReader(frame), nil, DefaultMaxFrame)
		require.NoError(t, err)
		var req Request
		require.NoError(t, DecodeRequest(body, &req)) // grows req's slices once
		return testing.AllocsPerRun(20, func() {
			if err := DecodeRequest(body, &req); err != nil {
				t.Fatal(err)
			}
		})
	}
	if one, many := allocs(1), allocs(64); many > one {
		t.Fatalf("decoding acquire_many: %v allocations with 1 intent, %v with 64", one, many)
	}
}
