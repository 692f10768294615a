// Package web serves klockd's HTTP side, off by default (klockd --http):
// Prometheus /metrics, and a read-only dashboard page at / that loads
// /api/state and then follows /events, a Server-Sent Events stream fed by
// the same watch stream as the watch op.
//
// The page is one HTML file embedded in the binary: no build step, nothing
// fetched from the internet. Nothing here can change klock's state, and
// nothing is authenticated, so klockd serves it only on a loopback address
// or a Unix socket (Listen refuses anything else).
package web
