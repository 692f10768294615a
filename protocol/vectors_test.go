package protocol

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Test vectors: whole frames (length prefix included) as hex, for clients
// in other languages to check themselves against. README.md lists them too.
// Map keys may come in any order on the wire; these are the orders klock's
// own encoders produce.
var (
	vecRegister = "0000003d83a2696401a26f70ae72656769737465725f6167656e74a46172677382a86167656e745f6964ac6167656e742d73656e696f72a87072696f7269747964"
	vecAcquire  = "0000008183a2696402a26f70a761637175697265a46172677386a86167656e745f6964ac6167656e742d73656e696f72aa73657373696f6e5f6964a27331ad7265736f757263655f74797065a446494c45ad7265736f757263655f70617468ac2f7372632f617574682e7473a9707265646963617465a74d555441544553a374746ccdea60"
	vecCount    = "0000001b82a2696403a26f70b26163746976655f6c656173655f636f756e74"
	vecGrant    = "000000ca83a2696402a26f6bc3a6726573756c7489a773756363657373c3a86c656173655f6964d92435663063336231652d386437612d346135332d396331652d326237663664396534613130a86167656e745f6964ac6167656e742d73656e696f72aa73657373696f6e5f6964a27331a87265736f75726365b146494c453a2f7372632f617574682e7473a9707265646963617465a74d555441544553ab61637175697265645f6174cf0000018dd674df00aa657870697265735f6174cf0000018dd675c960a566656e636501"
	vecDie      = "0000007a83a2696404a26f6bc3a6726573756c7485a773756363657373c2a6726561736f6ea3444945a9776169745f74696d65cd03e8a768656c645f6279ac6167656e742d73656e696f72a76d657373616765d92946494c453a2f7372632f617574682e74732069732068656c64206279206167656e742d73656e696f72"
	vecCountRes = "0000001883a2696403a26f6bc3a6726573756c7481a5636f756e7400"
	// An acquire bound to its process, without a ttl, and its grant.
	vecAcquireBound = "0000008783a2696405a26f70a761637175697265a46172677386a86167656e745f6964ac6167656e742d73656e696f72aa73657373696f6e5f6964a27331ad7265736f757263655f74797065a446494c45ad7265736f757263655f70617468ac2f7372632f617574682e7473a9707265646963617465a74d555441544553a462696e64a770726f63657373"
	vecGrantBound   = "000000cf83a2696405a26f6bc3a6726573756c748aa773756363657373c3a86c656173655f6964d92430643463326139652d366231662d346533372d386135322d393363316637653662303234a86167656e745f6964ac6167656e742d73656e696f72aa73657373696f6e5f6964a27331a87265736f75726365b146494c453a2f7372632f617574682e7473a9707265646963617465a74d555441544553ab61637175697265645f6174cf0000018dd674df00aa657870697265735f617400a566656e636502a9626f756e645f706964cd1092"
	vecBadFrame     = "0000002983a2696400a26f6bc2a56572726f7282a4636f6465a94241445f4652414d45a76d657373616765a178"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

func decodeVector(t *testing.T, s string) Request {
	t.Helper()
	body, err := ReadFrame(bytes.NewReader(unhex(t, s)), nil, DefaultMaxFrame)
	require.NoError(t, err)
	var req Request
	require.NoError(t, DecodeRequest(body, &req))
	return req
}

func TestRequestVectors(t *testing.T) {
	req := decodeVector(t, vecRegister)
	assert.Equal(t, uint64(1), req.ID)
	assert.Equal(t, OpRegisterAgent, req.Op)
	assert.Equal(t, "agent-senior", req.Args.AgentID)
	assert.Equal(t, int64(100), req.Args.Priority)

	req = decodeVector(t, vecAcquire)
	assert.Equal(t, OpAcquire, req.Op)
	assert.Equal(t, "s1", req.Args.SessionID)
	assert.Equal(t, "/src/auth.ts", req.Args.ResourcePath)
	assert.Equal(t, int64(60000), req.Args.TTL)

	req = decodeVector(t, vecAcquireBound)
	assert.Equal(t, OpAcquire, req.Op)
	assert.Equal(t, "process", req.Args.Bind)
	assert.False(t, req.Args.Has(ArgTTL))

	req = decodeVector(t, vecCount)
	assert.Equal(t, uint64(3), req.ID)
	assert.Equal(t, OpActiveLeaseCount, req.Op)

	// And our encoder produces exactly these bytes.
	var a Args
	a.AgentID, a.Priority = "agent-senior", 100
	a.Set(ArgAgentID)
	a.Set(ArgPriority)
	got, err := AppendRequest(nil, 1, OpRegisterAgent, &a)
	require.NoError(t, err)
	assert.Equal(t, vecRegister, hex.EncodeToString(got))
	got, err = AppendRequest(nil, 3, OpActiveLeaseCount, nil)
	require.NoError(t, err)
	assert.Equal(t, vecCount, hex.EncodeToString(got))
}

func TestResponseVectors(t *testing.T) {
	grant := Grant{Success: true, LeaseID: "5f0c3b1e-8d7a-4a53-9c1e-2b7f6d9e4a10", AgentID: "agent-senior",
		SessionID: "s1", Resource: "FILE:/src/auth.ts", Predicate: "MUTATES",
		AcquiredAt: 1708700000000, ExpiresAt: 1708700060000, Fence: 1}
	die := Denial{Reason: ReasonDie, WaitTime: 1000, HeldBy: "agent-senior",
		Message: "FILE:/src/auth.ts is held by agent-senior"}
	boundGrant := Grant{Success: true, LeaseID: "0d4c2a9e-6b1f-4e37-8a52-93c1f7e6b024", AgentID: "agent-senior",
		SessionID: "s1", Resource: "FILE:/src/auth.ts", Predicate: "MUTATES",
		AcquiredAt: 1708700000000, ExpiresAt: 0, Fence: 2, BoundPID: 4242}
	for _, v := range []struct {
		hex    string
		id     uint64
		result any
	}{{vecGrant, 2, grant}, {vecDie, 4, die}, {vecCountRes, 3, CountResult{}}, {vecGrantBound, 5, boundGrant}} {
		got, err := AppendResult(nil, v.id, v.result)
		require.NoError(t, err)
		assert.Equal(t, v.hex, hex.EncodeToString(got), "AppendResult(%d, %+v)", v.id, v.result)
	}
	assert.Equal(t, vecBadFrame, hex.EncodeToString(AppendError(nil, 0, CodeBadFrame, "x")))

	body, err := ReadFrame(bytes.NewReader(unhex(t, vecGrant)), nil, DefaultMaxFrame)
	require.NoError(t, err)
	var resp Response
	require.NoError(t, DecodeResponse(body, &resp))
	var res AcquireResult
	require.NoError(t, DecodeResult(resp.Result, &res))
	assert.Equal(t, grant.ExpiresAt, res.ExpiresAt)
	assert.True(t, res.Success)

	body, err = ReadFrame(bytes.NewReader(unhex(t, vecGrantBound)), nil, DefaultMaxFrame)
	require.NoError(t, err)
	require.NoError(t, DecodeResponse(body, &resp))
	require.NoError(t, DecodeResult(resp.Result, &res))
	assert.Equal(t, int32(4242), res.BoundPID)
	assert.Zero(t, res.ExpiresAt)
}
