// Package cluster makes klockd instances on several machines one lock
// table, on etcd: etcd (Raft, linearizable, durable) is the replicated,
// ordered log of engine commands, and every node's engine applies that log
// in revision order. The engine stays the only decider; nothing here
// decides a lease.
//
// # The log
//
// A node proposes each state change as a Command (what to change, the
// proposer's clock, its owner id). Commands that arrive together share one
// etcd write, a batch under <prefix>log/. Every node watches that prefix
// and applies each batch, in revision order, to its StateMachine; the
// proposer answers its client when it applies its own command, so an answer
// always reflects the one order every node sees.
//
// Determinism is what makes the replicas agree: each Entry carries the time
// to apply it at (the largest command time so far, so time never goes
// back) and a seed derived from its revision for anything random (lease
// ids).
//
// # Reads
//
// Barrier waits until the node has applied everything etcd had committed
// when it was called (one linearizable etcd round trip, shared by the
// reads that arrive together); a read served after it sees every change
// acknowledged before it began, on any node.
//
// # The leader
//
// One node, elected through etcd (concurrency.Election), proposes the
// commands no client asks for: a Tick when the engine has a deadline due
// (lease expiry, a queued request timing out), and DropOwner for a node
// whose etcd session lapsed, so that what only that node could end (its
// queued requests, its leases without a ttl) ends. It also writes
// snapshots of the state to etcd and deletes the log below them; a node
// that starts loads the snapshot, then the log after it, then watches.
//
// # Failure
//
// Without an etcd quorum nothing can be ordered: Propose and Barrier fail
// with ErrUnavailable at once while the node knows it has no quorum, and a
// command in flight when the quorum went fails with ErrUncertain (it may
// still be applied when the quorum returns). A background probe notices
// the quorum's return and the node serves again.
//
// Layout under the prefix (default /klock/):
//
//	meta                  cluster settings and the id seed (created once)
//	nodes/<node-id>       a live node's owner id, on its etcd session lease
//	leader                the election (concurrency.Election)
//	log/<owner>/<seq>     one batch of commands
//	snapshot              the current snapshot's head (revision, time, chunks)
//	snapshot/<rev>/<n>    its chunks
package cluster
