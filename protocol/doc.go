// Package protocol is klock's wire contract: length-prefixed msgpack frames
// over a Unix stream socket, the request and response envelopes, operation
// names, error codes and the argument and result shapes shared by klockd and
// its clients. README.md beside this file is the written specification.
//
// The package works over io.Reader and io.Writer only; it knows nothing of
// sockets, the lease engine or the client.
package protocol
