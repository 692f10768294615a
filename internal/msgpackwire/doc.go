// Package msgpackwire reads and writes msgpack values in byte slices, for
// klock's hand-written codecs: the protocol's requests and hot results, and
// the store's journal records.
//
// The appenders write exactly the bytes github.com/vmihailenco/msgpack/v5
// writes with UseCompactInts(true), so a hand-written encoder built from
// them can be held byte for byte to the library. The Reader checks every
// declared length against the bytes really there before it trusts it, so a
// hostile frame cannot make it allocate or read past its input. Both are
// property-tested against the library (wire_test.go).
//
// Which hand-written codecs exist, and what each buys over the library, is
// in BENCHMARKS.md ("The hand-written msgpack code").
package msgpackwire
