package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/vmihailenco/msgpack/v5"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// snapshotChunk is the most bytes of a snapshot one etcd key holds (etcd
// refuses requests over --max-request-bytes, 1.5 MiB by default).
const snapshotChunk = 512 << 10

// deleteOps is how many deletes go in one etcd transaction (etcd's
// --max-txn-ops is 128 by default).
const deleteOps = 128

// snapshotHead describes the current snapshot: the state after the batch at
// Rev, stored in Chunks keys under snapshot/<Rev>/.
type snapshotHead struct {
	Rev    int64  `msgpack:"r"`
	Time   int64  `msgpack:"t"` // the clock after Rev
	Chunks int    `msgpack:"n"`
	Size   int    `msgpack:"sz"`
	CRC    uint32 `msgpack:"crc"` // CRC-32C of the whole state
	// Prev is the revision of the snapshot before this one: the log is
	// kept back to it, so that a node a little behind catches up from the
	// log instead of reloading the state.
	Prev int64 `msgpack:"p"`
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readSnapshotHead reads the current snapshot head (nil when none) and the
// revision etcd is at, with one linearizable read.
func (n *Node) readSnapshotHead(ctx context.Context) (*snapshotHead, int64, error) {
	resp, err := n.cli.Get(ctx, n.keys.snapshotHead())
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	var h snapshotHead
	if err := msgpack.Unmarshal(resp.Kvs[0].Value, &h); err != nil {
		return nil, 0, fmt.Errorf("klock: snapshot head at %s does not decode: %w", n.keys.snapshotHead(), err)
	}
	return &h, resp.Header.Revision, nil
}

// loadSnapshot reads the snapshot h describes, as of revision rev, and
// restores the state machine from it.
func (n *Node) loadSnapshot(ctx context.Context, h *snapshotHead, rev int64) error {
	var state []byte
	from := n.keys.chunk(h.Rev, 0)
	for {
		rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
		resp, err := n.cli.Get(rctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(n.keys.chunks(h.Rev))),
			clientv3.WithRev(rev), clientv3.WithLimit(2))
		cancel()
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			state = append(state, kv.Value...)
			from = string(kv.Key) + "\x00"
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
	}
	if len(state) != h.Size || crc32.Checksum(state, castagnoli) != h.CRC {
		return fmt.Errorf("klock: snapshot at revision %d is damaged (%d bytes, want %d, or its checksum differs)", h.Rev, len(state), h.Size)
	}
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	if err := n.sm.Restore(state); err != nil {
		return fmt.Errorf("klock: loading the snapshot at revision %d: %w", h.Rev, err)
	}
	n.applied.Store(h.Rev)
	n.clock = h.Time
	n.sinceSnap = 0
	// This node's batches in flight may lie in the part of the log it
	// skipped: it cannot tell their outcome.
	n.prop.giveUpAll(ErrUncertain)
	n.log.Info("loaded the lock table from a snapshot", "revision", h.Rev, "bytes", h.Size)
	return nil
}

// writeSnapshot stores the state machine's state in etcd as the current
// snapshot, while e's leadership holds, and deletes the log and snapshots
// the previous snapshot made unneeded. It returns the new head.
func (n *Node) writeSnapshot(ctx context.Context, e *concurrency.Election, prev *snapshotHead) (*snapshotHead, error) {
	n.applyMu.Lock()
	rev, clock := n.applied.Load(), n.clock
	state, err := n.sm.Snapshot()
	n.sinceSnap = 0
	n.applyMu.Unlock()
	if err != nil {
		return nil, err
	}
	if prev != nil && prev.Rev >= rev {
		return prev, nil
	}
	h := &snapshotHead{Rev: rev, Time: clock, Size: len(state), CRC: crc32.Checksum(state, castagnoli)}
	if prev != nil {
		h.Prev = prev.Rev
	}
	for off := 0; off < len(state) || h.Chunks == 0; off += snapshotChunk {
		chunk := state[off:min(off+snapshotChunk, len(state))]
		rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
		_, err := n.cli.Put(rctx, n.keys.chunk(rev, h.Chunks), string(chunk))
		cancel()
		if err != nil {
			return nil, err
		}
		h.Chunks++
	}
	b, err := msgpack.Marshal(h)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	resp, err := n.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())).
		Then(clientv3.OpPut(n.keys.snapshotHead(), string(b))).
		Commit()
	cancel()
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		return nil, errors.New("klock: no longer the leader; snapshot not stored")
	}
	n.log.Debug("wrote a snapshot", "revision", rev, "bytes", len(state), "chunks", h.Chunks)
	if h.Prev > 0 {
		if err := n.deleteBelow(ctx, h.Prev); err != nil {
			n.log.Warn("deleting the log below a snapshot failed; it is retried after the next one", "err", err)
		}
	}
	return h, nil
}

// deleteBelow deletes the log batches at or below rev and every snapshot
// older than rev.
func (n *Node) deleteBelow(ctx context.Context, rev int64) error {
	for {
		rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
		resp, err := n.cli.Get(rctx, n.keys.log(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithMaxModRev(rev), clientv3.WithLimit(deleteOps))
		cancel()
		if err != nil {
			return err
		}
		var keys []string
		for _, kv := range resp.Kvs {
			keys = append(keys, string(kv.Key))
		}
		if err := n.deleteKeys(ctx, keys); err != nil {
			return err
		}
		if !resp.More {
			break
		}
	}
	// Older snapshots: their chunk directories sort before rev's.
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	_, err := n.cli.Delete(rctx, n.keys.snapshotDir(), clientv3.WithRange(n.keys.chunks(rev)))
	return err
}

func (n *Node) deleteKeys(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpDelete(k)
	}
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	_, err := n.cli.Txn(rctx).Then(ops...).Commit()
	return err
}
