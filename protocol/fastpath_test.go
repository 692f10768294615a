package protocol

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"pgregory.net/rapid"
)

// libraryEncode encodes v as the msgpack library does with compact ints,
// the reference the hand-written encoders must match byte for byte.
func libraryEncode(t require.TestingT, v any) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	require.NoError(t, enc.Encode(v))
	return buf.Bytes()
}

func genGrant(t *rapid.T) Grant {
	return Grant{
		Success:    rapid.Bool().Draw(t, "success"),
		LeaseID:    rapid.String().Draw(t, "lease"),
		AgentID:    rapid.StringN(0, 300, -1).Draw(t, "agent"),
		SessionID:  rapid.String().Draw(t, "session"),
		Resource:   rapid.StringN(0, 70000, -1).Draw(t, "resource"),
		Predicate:  rapid.String().Draw(t, "pred"),
		AcquiredAt: rapid.Int64().Draw(t, "acquired"),
		ExpiresAt:  rapid.Int64().Draw(t, "expires"),
		Fence:      rapid.Uint64().Draw(t, "fence"),
		BoundPID:   rapid.Int32().Draw(t, "bound_pid"),
	}
}

// TestFastEncodersMatchLibrary: for every hand-encoded result, the bytes
// equal the library's, and the hand-written decoder reads back the value.
func TestFastEncodersMatchLibrary(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		g := genGrant(t)
		many := AcquireManyGrant{Success: true, Leases: rapid.SliceOfN(rapid.Custom(genGrant), 0, 20).Draw(t, "leases")}
		d := Denial{Reason: Reason(rapid.String().Draw(t, "reason")), WaitTime: rapid.Int64().Draw(t, "wait"),
			HeldBy: rapid.String().Draw(t, "held"), Message: rapid.String().Draw(t, "msg"), HeldPath: rapid.String().Draw(t, "heldpath")}
		rel := ReleaseResult{Released: rapid.Bool().Draw(t, "released")}
		hb := HeartbeatResult{LeaseID: rapid.String().Draw(t, "hb"), ExpiresAt: rapid.Int64().Draw(t, "hbexp")}
		ev := WatchEvent{Event: rapid.String().Draw(t, "event"), At: rapid.Int64().Draw(t, "at"), Resource: g.Resource,
			AgentID: g.AgentID, SessionID: g.SessionID, LeaseID: g.LeaseID, Predicate: g.Predicate, Fence: g.Fence,
			ExpiresAt: rapid.SampledFrom([]int64{0, 1, -1, g.ExpiresAt}).Draw(t, "evexp"),
			BoundPID:  rapid.SampledFrom([]int32{0, g.BoundPID}).Draw(t, "evbound"),
			Reason:    Reason(rapid.SampledFrom([]string{"", "DIE", "WAIT"}).Draw(t, "evreason")),
			HeldBy:    rapid.SampledFrom([]string{"", "x", g.AgentID}).Draw(t, "evheld")}
		for _, v := range []wireAppender{&g, &many, &d, &rel, &hb, &ev} {
			require.Equal(t, libraryEncode(t, v), v.appendMsgpack(nil), "%T %+v", v, v)
		}

		var gotG Grant
		require.NoError(t, DecodeResult(g.appendMsgpack(nil), &gotG))
		require.Equal(t, g, gotG)
		var gotA AcquireResult
		require.NoError(t, DecodeResult(d.appendMsgpack(nil), &gotA))
		require.Equal(t, AcquireResult{Reason: d.Reason, WaitTime: d.WaitTime, HeldBy: d.HeldBy, Message: d.Message, HeldPath: d.HeldPath}, gotA)
		require.NoError(t, DecodeResult(many.appendMsgpack(nil), &gotA))
		if len(many.Leases) == 0 {
			require.Empty(t, gotA.Leases)
		} else {
			require.Equal(t, many.Leases, gotA.Leases)
		}
		var gotH HeartbeatResult
		require.NoError(t, DecodeResult(hb.appendMsgpack(nil), &gotH))
		require.Equal(t, hb, gotH)
		var gotE WatchEvent
		require.NoError(t, DecodeResult(ev.appendMsgpack(nil), &gotE))
		require.Equal(t, ev, gotE)
	})
}

// TestFastDecodersMatchLibrary decodes maps the daemon never sends (extra
// keys, nils, other integer widths, keys that are not strings) with both
// the hand-written decoders and the library, and compares.
func TestFastDecodersMatchLibrary(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := map[any]any{}
		keys := []string{"success", "lease_id", "agent_id", "resource", "fence", "expires_at", "wait_time",
			"reason", "released", "count", "extra", "acquired_at", "event", "at", "held_by"}
		for _, k := range rapid.SliceOfDistinct(rapid.SampledFrom(keys), rapid.ID[string]).Draw(t, "keys") {
			switch k {
			case "success", "released":
				m[k] = rapid.SampledFrom([]any{nil, true, false}).Draw(t, k)
			case "lease_id", "agent_id", "resource", "reason", "event", "held_by":
				m[k] = rapid.SampledFrom([]any{nil, "", "x", "FILE:/a"}).Draw(t, k)
			case "extra":
				m[k] = rapid.SampledFrom([]any{nil, 1.5, []any{1, "a", map[string]any{"b": nil}}, []byte{1, 2}}).Draw(t, k)
			default:
				m[k] = rapid.SampledFrom([]any{nil, int8(-3), int64(-70000), uint8(200), uint16(60000), int64(1 << 40), uint64(7)}).Draw(t, k)
			}
		}
		if rapid.Bool().Draw(t, "intkey") {
			m[int64(5)] = "ignored"
		}
		raw, err := msgpack.Marshal(m)
		require.NoError(t, err)
		for _, pair := range [][2]any{
			{new(AcquireResult), new(AcquireResult)}, {new(Grant), new(Grant)}, {new(ReleaseResult), new(ReleaseResult)},
			{new(HeartbeatResult), new(HeartbeatResult)},
			{new(WatchEvent), new(WatchEvent)},
		} {
			fast, lib := pair[0], pair[1]
			errFast := DecodeResult(raw, fast)
			if err := msgpack.Unmarshal(raw, lib); err != nil {
				continue // the hand-written decoders skip keys that are not strings; the library refuses them
			}
			require.NoError(t, errFast, "decoding %x into %T", raw, fast)
			require.Equal(t, lib, fast, "decoding %x", raw)
		}
	})
}

func BenchmarkDecodeRequestAcquire(b *testing.B) {
	frame, _ := AppendRequest(nil, 2, OpAcquire, func() *Args {
		a := &Args{AgentID: "agent-senior", SessionID: "s1", ResourceType: "FILE", ResourcePath: "/src/auth.ts", Predicate: "MUTATES", TTL: 60000}
		for _, x := range []Arg{ArgAgentID, ArgSessionID, ArgResourceType, ArgResourcePath, ArgPredicate, ArgTTL} {
			a.Set(x)
		}
		return a
	}())
	body := frame[HeaderSize:]
	var req Request
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeRequest(body, &req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendGrant(b *testing.B) {
	g := &Grant{Success: true, LeaseID: "5f0c3b1e-8d7a-4a53-9c1e-2b7f6d9e4a10", AgentID: "agent-senior", SessionID: "s1",
		Resource: "FILE:/src/auth.ts", Predicate: "MUTATES", AcquiredAt: 1708700000000, ExpiresAt: 1708700060000, Fence: 1}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendResult(buf[:0], 2, g); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeGrantResponse(b *testing.B) {
	g := &Grant{Success: true, LeaseID: "5f0c3b1e-8d7a-4a53-9c1e-2b7f6d9e4a10", AgentID: "agent-senior", SessionID: "s1",
		Resource: "FILE:/src/auth.ts", Predicate: "MUTATES", AcquiredAt: 1708700000000, ExpiresAt: 1708700060000, Fence: 1}
	frame, _ := AppendResult(nil, 2, g)
	body := frame[HeaderSize:]
	var resp Response
	var res AcquireResult
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeResponse(body, &resp); err != nil {
			b.Fatal(err)
		}
		if err := DecodeResult(resp.Result, &res); err != nil {
			b.Fatal(err)
		}
	}
}
