package protocol

// Code is an error code carried in a response's error map. The set is closed:
// README.md lists when each is used.
type Code string

// Error codes, as in README.md "Error codes".
const (
	CodeBadFrame          Code = "BAD_FRAME"
	CodeBadRequest        Code = "BAD_REQUEST"
	CodeUnknownOp         Code = "UNKNOWN_OP"
	CodeInvalidArgument   Code = "INVALID_ARGUMENT"
	CodeUnknownAgent      Code = "UNKNOWN_AGENT"
	CodePriorityConflict  Code = "PRIORITY_CONFLICT"
	CodeNotFound          Code = "NOT_FOUND"
	CodePermissionDenied  Code = "PERMISSION_DENIED"
	CodeResourceExhausted Code = "RESOURCE_EXHAUSTED"
	CodeShuttingDown      Code = "SHUTTING_DOWN"
	CodeUnavailable       Code = "UNAVAILABLE"
	CodeBindUnavailable   Code = "BIND_UNAVAILABLE"
	CodeInternal          Code = "INTERNAL"
)

// Reason says why an acquire was denied (result.reason). A denial is a
// normal result, never an error.
type Reason string

// Denial reasons, as in README.md "Denial reasons".
const (
	ReasonDie            Reason = "DIE"
	ReasonWait           Reason = "WAIT"
	ReasonConflict       Reason = "CONFLICT"
	ReasonResourceLocked Reason = "RESOURCE_LOCKED"
	ReasonSessionExpired Reason = "SESSION_EXPIRED"
)

// Version is the protocol version announced by hello.
const Version = 1

// DefaultMaxFrame is the default cap on a frame body, in bytes (1 MiB).
const DefaultMaxFrame = 1 << 20
