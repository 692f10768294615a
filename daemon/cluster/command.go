package cluster

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Kind says what a command asks the state machine to do.
type Kind uint8

// The command kinds. Values are stored in etcd: never renumber.
const (
	// KindChange is a client's state change; Body is the state machine's
	// own encoding of it.
	KindChange Kind = 1
	// KindTick asks the state machine to do what is due at the entry's
	// time: expire leases, time out queued requests (the leader's).
	KindTick Kind = 2
	// KindDropOwner asks it to end what only the owner named in Body
	// could end: its queued requests, its leases without a ttl (the
	// leader's, for a node whose etcd session lapsed).
	KindDropOwner Kind = 3
)

// String names the kind for logs.
func (k Kind) String() string {
	switch k {
	case KindChange:
		return "change"
	case KindTick:
		return "tick"
	case KindDropOwner:
		return "drop-owner"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Command is one proposed state change, as stored in etcd.
type Command struct {
	Kind Kind   `msgpack:"k"`
	Time int64  `msgpack:"t"` // the proposer's clock, Unix ms
	Body []byte `msgpack:"b,omitempty"`
}

// batchVersion is the layout of a stored batch.
const batchVersion = 1

// batch is the value of one log key: the commands of one etcd write, all
// from one owner.
type batch struct {
	Version  int       `msgpack:"v"`
	Owner    string    `msgpack:"o"`
	Commands []Command `msgpack:"c"`
}

func encodeBatch(owner string, cmds []Command) ([]byte, error) {
	return msgpack.Marshal(&batch{Version: batchVersion, Owner: owner, Commands: cmds})
}

func decodeBatch(b []byte) (*batch, error) {
	var bt batch
	if err := msgpack.Unmarshal(b, &bt); err != nil {
		return nil, fmt.Errorf("klock: log batch does not decode: %w", err)
	}
	if bt.Version != batchVersion {
		return nil, fmt.Errorf("klock: log batch has version %d; this klockd reads %d", bt.Version, batchVersion)
	}
	if len(bt.Commands) == 0 {
		return nil, errors.New("klock: log batch holds no command")
	}
	return &bt, nil
}

// Entry is one command as a node applies it: where it is in the log and
// what it is, with the time to apply it at and a seed for anything random.
// Every node builds the same entries from the same log.
type Entry struct {
	Rev   int64  // etcd revision of the command's batch
	Index int    // position in the batch
	Owner string // the proposer's owner id (node id and incarnation)
	// Time is the time to apply the command at, Unix ms: the largest
	// command time so far, so that it never goes back even when the
	// proposers' clocks disagree.
	Time int64
	Kind Kind
	Body []byte
	// Seed is derived from the cluster's secret, Rev and Index: the same
	// on every node, and different for every command.
	Seed [32]byte
}

// entrySeed derives an entry's seed.
func entrySeed(secret []byte, rev int64, index int) [32]byte {
	h := sha256.New()
	h.Write(secret)
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(rev))
	binary.BigEndian.PutUint64(b[8:], uint64(index))
	h.Write(b[:])
	var s [32]byte
	h.Sum(s[:0])
	return s
}
