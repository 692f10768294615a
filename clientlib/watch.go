package clientlib

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/klockd/klock/protocol"
)

// WatchFilter selects the events of a watch; "" matches everything.
type WatchFilter struct {
	AgentID string // only events of this agent
	Prefix  string // only resources whose key starts with this (FILE:/src/)
}

// ErrWatchOverflow is returned by Watcher.Next after the daemon's final
// "overflow" event: the watcher fell too far behind and its stream ended.
var ErrWatchOverflow = errors.New("klock: watch ended: this watcher fell behind and the daemon cut it off (overflow)")

// Watcher is one watch stream on a connection of its own, so a slow
// reader delays nobody else. It is not safe for concurrent use, except
// Close, which may be called from any goroutine to stop a blocked Next.
type Watcher struct {
	// ID is the daemon's watch_id.
	ID int64

	nc      net.Conn
	br      *bufio.Reader
	reqID   uint64
	buf     []byte
	max     int
	closeMu sync.Mutex
	closed  bool
	ended   error
}

// watchReqID is the request id of the watch on its own connection.
const watchReqID = 1

// Watch opens a watch stream: it dials the daemon (without reconnecting:
// a watch is a live view, and a new one is as good as a resumed one),
// sends watch with the filter and waits for the first answer. ctx bounds
// the dial and that answer only. Refusals are *Error (INVALID_ARGUMENT for
// a bad filter, RESOURCE_EXHAUSTED when too many watches are open).
func Watch(ctx context.Context, opts Options, f WatchFilter) (*Watcher, error) {
	opts = opts.withDefaults()
	d := net.Dialer{Timeout: opts.DialTimeout}
	nc, err := d.DialContext(ctx, "unix", opts.Socket)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("klock: dialling %s: %w", opts.Socket, ctx.Err())
		}
		return nil, &DialError{Socket: opts.Socket, Err: err}
	}
	w := &Watcher{nc: nc, br: bufio.NewReader(nc), reqID: watchReqID, max: protocol.DefaultMaxFrame}
	stop := context.AfterFunc(ctx, func() { w.Close() })
	defer stop()
	args := filterArgs(f.AgentID, f.Prefix)
	frame, err := protocol.AppendRequest(nil, w.reqID, protocol.OpWatch, &args)
	if err == nil {
		_, err = nc.Write(frame)
	}
	var resp protocol.Response
	if err == nil {
		err = w.read(&resp)
	}
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("klock: starting a watch: %w", ctx.Err())
		}
		return nil, err
	}
	if !resp.OK {
		nc.Close()
		return nil, remoteError(resp.Error)
	}
	var res protocol.WatchResult
	if err := protocol.DecodeResult(resp.Result, &res); err != nil {
		nc.Close()
		return nil, err
	}
	w.ID = res.WatchID
	return w, nil
}

// read reads one response of the watch's connection.
func (w *Watcher) read(resp *protocol.Response) error {
	body, err := protocol.ReadFrame(w.br, w.buf, w.max)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || w.isClosed() {
			return ErrClosed
		}
		return err
	}
	w.buf = body[:0]
	return protocol.DecodeResponse(body, resp)
}

// Next blocks until the next event and returns it. After the daemon's
// overflow event it returns ErrWatchOverflow; after Close, or when the
// daemon goes away, ErrClosed. Either error ends the stream for good.
func (w *Watcher) Next() (*protocol.WatchEvent, error) {
	if w.ended != nil {
		return nil, w.ended
	}
	for {
		var resp protocol.Response
		if err := w.read(&resp); err != nil {
			w.ended = err
			return nil, err
		}
		if resp.ID != w.reqID {
			continue // nothing else is sent on this connection
		}
		if !resp.OK {
			w.ended = remoteError(resp.Error)
			return nil, w.ended
		}
		ev := new(protocol.WatchEvent)
		if err := protocol.DecodeResult(resp.Result, ev); err != nil {
			w.ended = err
			return nil, err
		}
		if ev.Event == protocol.EventOverflow {
			w.ended = ErrWatchOverflow
			return nil, w.ended
		}
		return ev, nil
	}
}

// Close ends the stream and its connection. Closing twice is harmless.
func (w *Watcher) Close() error {
	w.closeMu.Lock()
	defer w.closeMu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return w.nc.Close()
}

func (w *Watcher) isClosed() bool {
	w.closeMu.Lock()
	defer w.closeMu.Unlock()
	return w.closed
}
