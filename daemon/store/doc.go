// Package store makes klockd's lease state durable: an append-only log of
// engine records, written with group commit, plus snapshots that bound how
// much of the log recovery has to replay.
//
// The engine decides and emits records (engine.Record); the store only
// frames, writes, reads back and replays them. FORMAT.md beside this file is
// the written specification of the on-disk format and the recovery rules.
//
// Files in a state directory:
//
//	LOCK                   flock(2)ed by the running daemon; holds its pid
//	snapshot.<gen>         engine.State at the start of log.<gen>
//	log.<gen>              records appended after snapshot.<gen> was taken
//
// Generations are 16 hex digits so that names sort in order. Recovery loads
// the newest snapshot and replays log.<gen>, log.<gen+1>, ... in order.
package store
