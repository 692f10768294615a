package clientlib

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klockd/klock/protocol"
)

// Client is a connection to klockd shared by any number of goroutines. Its
// methods are safe for concurrent use; requests from many goroutines are
// pipelined on one socket.
type Client struct {
	opts       Options
	maxFrame   atomic.Int64 // the daemon's max_frame (from hello): the largest request
	idemPrefix string
	nextID     atomic.Uint64
	idemSeq    atomic.Uint64
	life       context.Context // cancelled by Close (or a break with NoReconnect)
	endLife    context.CancelFunc
	bg         sync.WaitGroup // background goroutines: redial, keep-alive, orphan release
	handoffs   atomic.Uint64  // answers a reader passed to another caller (see deliver)
	writes     atomic.Uint64  // write(2) calls, for the benchmark's requests-per-write
	oneStep    atomic.Uint64  // calls written and read in one step (retryReader.sendFirst)

	// mu guards the fields that follow, and the writer fields of every conn.
	mu      sync.Mutex
	conn    *conn            // the current connection; nil while disconnected
	pending map[uint64]*call // calls waiting for their answer, by id
	orphans map[uint64]*call // abandoned acquires: a late grant is released
	reading bool             // some caller holds the reader role
	dialing bool             // the redial loop is running
	dialErr error            // why the last (re)connection failed; nil once a connection answers
	backoff time.Duration    // delay before the next redial; 0 once a connection has answered
	// redialKick (buffered 1) cuts the redial loop's backoff sleep short.
	redialKick chan struct{}
	closed     bool
}

// call is one request in flight. Calls are pooled; a call is referenced by
// the maps only while it waits, and by its caller until it is put back.
type call struct {
	id      uint64
	acquire bool          // acquire or acquire_many: a late grant must be released
	frame   []byte        // the encoded request frame, kept for resending
	wake    chan struct{} // buffered(1): look at the call's state again

	// Guarded by Client.mu.
	waiting bool // its caller is (about to be) parked on wake, free to read
	done    bool
	resp    protocol.Response // the answer, once done and err is nil
	err     error             // a transport failure (ErrClosed), once done
}

var callPool = sync.Pool{New: func() any { return &call{wake: make(chan struct{}, 1)} }}

func getCall() *call { return callPool.Get().(*call) }

func putCall(cl *call) {
	select {
	case <-cl.wake:
	default:
	}
	frame := cl.frame[:0]
	if cap(frame) > maxKeptBuffer {
		frame = nil
	}
	*cl = call{frame: frame, wake: cl.wake}
	callPool.Put(cl)
}

// Dial connects to klockd, found as Options.Socket says; with no socket
// named and none answering, it starts a per-user klockd (found on PATH or
// next to the running executable; one line on stderr says so) unless
// autostart is off. It fails with an error matching ErrDaemonUnreachable
// (a *DialError naming the socket and what to do) when no daemon can be
// reached. ctx bounds connecting, and waiting for a started daemon.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	opts = opts.withDefaults()
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("klock: reading random bytes for idempotency keys: %w", err)
	}
	c := &Client{
		opts:       opts,
		idemPrefix: hex.EncodeToString(seed[:]) + "-",
		pending:    make(map[uint64]*call),
		orphans:    make(map[uint64]*call),
		redialKick: make(chan struct{}, 1),
	}
	nc, socket, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.opts.Socket = socket // redials go to the daemon found
	c.maxFrame.Store(protocol.DefaultMaxFrame)
	c.life, c.endLife = context.WithCancel(context.Background())
	c.mu.Lock()
	c.connected(newConn(nc))
	c.mu.Unlock()
	return c, nil
}

// Socket returns the path of the socket the Client connects to.
func (c *Client) Socket() string { return c.opts.Socket }

// SystemDaemon reports whether the Client talks to the system daemon
// (protocol.SystemSocket) rather than a per-user one.
func (c *Client) SystemDaemon() bool { return c.opts.Socket == protocol.SystemSocket }

// Close closes the connection and stops reconnecting. Calls in flight and
// later calls fail with ErrClosed; leases kept alive by Acquire are no longer
// renewed and report ErrClosed on Lost. Close waits for the Client's
// background goroutines; closing twice is harmless.
func (c *Client) Close() error {
	c.mu.Lock()
	c.shutdown(ErrClosed)
	c.mu.Unlock()
	c.bg.Wait()
	return nil
}

// shutdown marks the client closed and fails everything in flight with err.
// mu held.
func (c *Client) shutdown(err error) {
	if c.closed {
		return
	}
	c.closed = true
	c.endLife()
	if cn := c.conn; cn != nil {
		cn.broken = true
		cn.unwatch()
		_ = cn.nc.Close()
		c.conn = nil
	}
	for id, cl := range c.pending {
		delete(c.pending, id)
		c.finish(cl, err)
	}
	for id, cl := range c.orphans {
		delete(c.orphans, id)
		putCall(cl)
	}
}

// finish completes cl with a transport error and wakes its caller. mu held.
func (c *Client) finish(cl *call, err error) {
	cl.done, cl.err = true, err
	select {
	case cl.wake <- struct{}{}:
	default:
	}
}

// newIdem returns a fresh idempotency key, unique to this Client and call.
func (c *Client) newIdem() string {
	var b [40]byte
	n := copy(b[:], c.idemPrefix)
	return string(strconv.AppendUint(b[:n], c.idemSeq.Add(1), 36))
}

// do sends one request and decodes its result into out (nil to ignore it).
// A refusal from the daemon is an *Error. UNAVAILABLE is retried as the
// retry table's "one call" column and Options.UnavailableWait say: nothing
// was changed, so the same request is sent again.
func (c *Client) do(ctx context.Context, op string, args *protocol.Args, out any) error {
	var retry unavailableRetry
	for {
		sent := time.Now()
		cl, err := c.roundTrip(ctx, op, args)
		retry.rtt = time.Since(sent)
		if err != nil {
			return err
		}
		if cl.resp.OK {
			err = nil
			if out != nil {
				err = protocol.DecodeResult(cl.resp.Result, out)
			}
			putCall(cl)
			return err
		}
		err = remoteError(cl.resp.Error)
		putCall(cl)
		if callAction(codeOf(err)) != actBackoff || !retry.again(ctx, c.opts.UnavailableWait) {
			return err
		}
	}
}

// unavailableRetry paces the retries of one call answered UNAVAILABLE: the
// retry table's "retry with backoff", bounded by Options.UnavailableWait.
type unavailableRetry struct {
	start time.Time
	wait  backoff
	rtt   time.Duration // how long the last attempt took to be answered
}

// again waits before the next try and reports whether to make it: not when
// the wait would run past limit (counted from the first UNAVAILABLE; 0 =
// none, negative = no retry), nor when ctx's deadline would come before
// the next answer could (the wait plus the last attempt's round trip, plus
// deadlineMargin for a busy machine): the caller then gets UNAVAILABLE
// rather than its deadline. Nor when ctx ends.
func (r *unavailableRetry) again(ctx context.Context, limit time.Duration) bool {
	if limit < 0 {
		return false
	}
	if r.start.IsZero() {
		r.start = time.Now()
	}
	d := r.wait.next()
	until := time.Now().Add(d)
	if limit > 0 && until.After(r.start.Add(limit)) {
		return false
	}
	if dl, ok := ctx.Deadline(); ok && until.Add(r.rtt+deadlineMargin(time.Until(dl))).After(dl) {
		return false
	}
	return sleep(ctx, d) == nil
}

func remoteError(e *protocol.Error) error {
	if e == nil {
		return &Error{Code: protocol.CodeInternal, Message: "response has neither result nor error"}
	}
	return &Error{Code: e.Code, Message: e.Message}
}

// roundTrip sends one request and waits for its answer. The returned call
// is done with a response; the caller puts it back with putCall.
func (c *Client) roundTrip(ctx context.Context, op string, args *protocol.Args) (*call, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	cl := getCall()
	cl.id = c.nextID.Add(1)
	cl.acquire = op == protocol.OpAcquire || op == protocol.OpAcquireMany
	frame, err := protocol.AppendRequest(cl.frame[:0], cl.id, op, args)
	cl.frame = frame
	if err != nil {
		putCall(cl)
		return nil, fmt.Errorf("klock: encoding %s request: %w", op, err)
	}
	if size, limit := len(frame)-protocol.HeaderSize, c.maxFrame.Load(); int64(size) > limit {
		putCall(cl)
		return nil, &Error{Code: protocol.CodeInvalidArgument, Message: fmt.Sprintf(
			"%s request is %d bytes; the daemon's max_frame is %d bytes", op, size, limit)}
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		putCall(cl)
		return nil, ErrClosed
	}
	c.pending[cl.id] = cl
	if cn := c.conn; cn != nil {
		if len(c.pending) == 1 && !c.reading && !cn.flushing && len(cn.wbuf) == 0 &&
			!cn.broken && !cn.writeDead && cn.rd.rc != nil && cn.br.Buffered() == 0 {
			// The only call in flight, as with one connection per agent:
			// its caller writes the request and waits for the answer in
			// one step, without a read that would only say "not yet"
			// (retryReader.sendFirst).
			c.oneStep.Add(1)
			cn.flushing = true
			c.takeReader(ctx, cn)
			cn.rd.sendFirst(frame)
			c.mu.Unlock()
			c.read(ctx, cn, cl) // returns with mu held
			c.sendRest(cn)
			return c.wait(ctx, cl)
		}
		cn.wbuf = append(cn.wbuf, frame...)
		if !cn.flushing {
			if len(c.pending) > 1 {
				// Other calls are in flight, so their callers are likely
				// runnable right now (woken by the reader with their answers)
				// and about to send again: let them append first, so that
				// one write(2) carries them all.
				cn.flushing = true
				c.mu.Unlock()
				runtime.Gosched()
				c.mu.Lock()
			}
			c.flush(cn)
		}
	} else {
		c.startRedial()
	}
	return c.wait(ctx, cl)
}

// wait waits for cl's answer, taking the reader role whenever nobody holds
// it. Called with mu held; returns with it released.
func (c *Client) wait(ctx context.Context, cl *call) (*call, error) {
	for {
		if cl.done {
			c.mu.Unlock()
			if cl.err != nil {
				err := cl.err
				putCall(cl)
				return nil, err
			}
			return cl, nil
		}
		if err := ctx.Err(); err != nil {
			keep := c.abandon(cl)
			if c.dialErr != nil { // no connection, or one that has not answered yet
				err = &gaveUpError{ctxErr: err, dialErr: c.dialErr}
			}
			c.mu.Unlock()
			if !keep {
				putCall(cl)
			}
			return nil, err
		}
		if !c.reading && c.conn != nil {
			cn := c.conn
			c.takeReader(ctx, cn)
			c.mu.Unlock()
			c.read(ctx, cn, cl) // returns with mu held
			continue
		}
		cl.waiting = true
		c.mu.Unlock()
		select {
		case <-cl.wake:
		case <-ctx.Done():
		}
		c.mu.Lock()
		cl.waiting = false
	}
}

// takeReader gives the reader role on cn to a caller whose ctx's end must
// interrupt its reading. mu held.
func (c *Client) takeReader(ctx context.Context, cn *conn) {
	c.reading = true
	cn.watchReader(ctx)
}

// sendRest writes, the ordinary way, what a caller that wrote its request
// and read in one step (retryReader.sendFirst) could not write then: the
// socket's buffer was full, the write failed, mu was busy when the frames
// queued meanwhile were to be taken, or the reading ended first. mu held.
func (c *Client) sendRest(cn *conn) {
	rest, released := cn.rd.unsent()
	if released {
		return // written; retryReader.next gave up the writer role
	}
	if cn.broken || cn.writeDead {
		cn.flushing = false
		return
	}
	cn.wbuf = append(append(make([]byte, 0, len(rest)+len(cn.wbuf)), rest...), cn.wbuf...)
	c.flush(cn)
}

// sendNext is a connection's retryReader.next: called without mu by a
// caller that wrote written in one step with its read, it returns the
// frames queued since (written next in the same step), or nil and gives
// up the writer role.
func (c *Client) sendNext(cn *conn, written []byte, own bool) ([]byte, bool) {
	c.writes.Add(1)
	if !c.mu.TryLock() {
		return nil, false // sendRest finishes the job
	}
	defer c.mu.Unlock()
	if own {
		cn.spare = nil
		if cap(written) <= maxKeptBuffer {
			cn.spare = written[:0]
		}
	}
	if len(cn.wbuf) == 0 || cn.broken || cn.writeDead {
		cn.flushing = false
		return nil, true
	}
	buf := cn.wbuf
	cn.wbuf, cn.spare = cn.spare[:0], nil
	return buf, true
}

// abandon gives up waiting for cl, whose context ended. Its id is forgotten
// and a late answer is dropped, except for acquires: a late grant is
// released at once (keep reports that cl stays referenced for that). mu held.
func (c *Client) abandon(cl *call) (keep bool) {
	delete(c.pending, cl.id)
	if cl.acquire && c.conn != nil {
		c.orphans[cl.id] = cl
		keep = true
	}
	c.wakeReader()
	c.readOrphans()
	return keep
}

// readOrphans starts a background reader when answers to abandoned acquires
// are due but no caller is left to read them, so that a late grant is
// released promptly even on a client that has gone quiet. mu held.
func (c *Client) readOrphans() {
	if c.reading || c.conn == nil || c.closed || len(c.pending) > 0 || len(c.orphans) == 0 {
		return
	}
	c.reading = true
	cn := c.conn
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		c.read(context.Background(), cn, nil)
		c.mu.Unlock()
	}()
}

// wakeReader wakes one waiting caller when nobody holds the reader role, so
// that it takes the role. Only a parked caller is picked: one still writing
// (the flusher) may be blocked until somebody reads. mu held.
func (c *Client) wakeReader() {
	if c.reading || c.conn == nil {
		return
	}
	for _, cl := range c.pending {
		if !cl.waiting {
			continue
		}
		cl.waiting = false
		select {
		case cl.wake <- struct{}{}:
		default:
		}
		return
	}
}

// read holds the reader role on cn: it reads answers and hands them to their
// callers until own's answer arrives, own's context ends or cn breaks (with
// own nil: until no abandoned acquire awaits its answer). Then it gives the
// role up and wakes another waiting caller to take it. Called without mu;
// returns with it held.
func (c *Client) read(ctx context.Context, cn *conn, own *call) {
	for {
		body, err := cn.readFrame(c.readLimit())
		if err == errInterrupted {
			if ctx.Err() == nil {
				continue // a stale wake meant for an earlier reader
			}
			c.mu.Lock()
			break
		}
		if err == errSendBlocked {
			c.mu.Lock() // the caller writes the rest (sendRest)
			break
		}
		if err == nil {
			err = protocol.DecodeResponse(body, &cn.resp)
		}
		c.mu.Lock()
		if err != nil {
			c.breakConn(cn, err)
			break
		}
		if cn.resp.ID == cn.helloID {
			c.learn(&cn.resp)
		} else {
			c.deliver(cn, &cn.resp, own)
		}
		if own != nil && own.done || own == nil && len(c.orphans) == 0 {
			break
		}
		c.mu.Unlock()
	}
	c.reading = false
	c.wakeReader()
	c.readOrphans()
}

// deliver hands a response read from cn to its call. mu held.
func (c *Client) deliver(cn *conn, resp *protocol.Response, own *call) {
	if resp.ID == 0 {
		// An answer to no request: the daemon refuses the connection (too
		// many connections, say) or could not read a frame of ours; it
		// closes the connection next, and the refusal is why.
		if resp.Error != nil {
			cn.refusal = remoteError(resp.Error)
		}
		// Failing every call on BAD_FRAME keeps a resend from repeating the
		// bad frame forever.
		if resp.Error != nil && resp.Error.Code == protocol.CodeBadFrame {
			for id, cl := range c.pending {
				delete(c.pending, id)
				cl.done, cl.resp = true, protocol.Response{ID: id, Error: resp.Error}
				if cl != own {
					c.finish(cl, nil)
				}
			}
		}
		return
	}
	c.backoff, c.dialErr = 0, nil // this connection works
	if cl, ok := c.pending[resp.ID]; ok {
		if !resp.OK && resp.Error != nil && resp.Error.Code == protocol.CodeShuttingDown && !c.opts.NoReconnect {
			// The daemon is stopping and did not serve it: the call stays
			// pending and is resent once the Client has reconnected.
			return
		}
		delete(c.pending, resp.ID)
		cl.done, cl.resp = true, *resp
		if cl != own {
			c.handoffs.Add(1)
			select {
			case cl.wake <- struct{}{}:
			default:
			}
		}
		return
	}
	if cl, ok := c.orphans[resp.ID]; ok {
		delete(c.orphans, resp.ID)
		if resp.OK {
			c.releaseLate(resp.Result)
		}
		putCall(cl)
	}
}

// flush writes cn.wbuf, and whatever other callers append to it meanwhile,
// until it is empty: the first writer carries the others' frames, so many
// goroutines share one write(2). Called with mu held and returns with it
// held; mu is released during each write.
func (c *Client) flush(cn *conn) {
	cn.flushing = true
	for len(cn.wbuf) > 0 && !cn.broken && !cn.writeDead {
		buf := cn.wbuf
		cn.wbuf = cn.spare[:0]
		c.mu.Unlock()
		_, err := cn.nc.Write(buf)
		c.writes.Add(1)
		c.mu.Lock()
		// buf becomes the spare; the old spare is now cn.wbuf and must
		// never be handed out twice.
		cn.spare = nil
		if cap(buf) <= maxKeptBuffer {
			cn.spare = buf[:0]
		}
		if err != nil {
			if !peerClosed(err) {
				c.breakConn(cn, err)
				break
			}
			// The daemon closed the connection, maybe after saying why
			// (too many connections): leave the break to the reader, which
			// reads what was sent and then EOF. Nothing more is written.
			cn.writeDead = true
			cn.wbuf = cn.wbuf[:0]
			break
		}
	}
	cn.flushing = false
}

// breakConn retires a failed connection: with reconnecting on, the redial
// loop starts and will resend every pending call; otherwise the Client is
// closed and every call fails with ErrClosed. mu held.
func (c *Client) breakConn(cn *conn, err error) {
	if cn.broken {
		return
	}
	cn.broken = true
	cn.wbuf = nil
	cn.unwatch()
	_ = cn.nc.Close()
	if c.conn != cn {
		return
	}
	c.conn = nil
	if cn.refusal != nil {
		c.dialErr = cn.refusal
		err = cn.refusal
	}
	// Answers to orphans will never come; a lease granted to one expires.
	for id, cl := range c.orphans {
		delete(c.orphans, id)
		putCall(cl)
	}
	if c.opts.NoReconnect {
		c.shutdown(closedErr(err))
		return
	}
	c.startRedial()
}

// connected installs a new connection and sends every pending call on it
// in id order (the order they were first sent), after a hello that
// announces Options.ClientName and learns the daemon's max_frame. mu held.
func (c *Client) connected(cn *conn) {
	cn.rd.next = func(written []byte, own bool) ([]byte, bool) { return c.sendNext(cn, written, own) }
	c.conn = cn // dialErr stays until it answers: a daemon may refuse it next
	var args protocol.Args
	if c.opts.ClientName != "" {
		args.Client = c.opts.ClientName
		args.Set(protocol.ArgClient)
	}
	cn.helloID = c.nextID.Add(1)
	cn.wbuf, _ = protocol.AppendRequest(cn.wbuf, cn.helloID, protocol.OpHello, &args)
	if len(c.pending) > 0 {
		ids := make([]uint64, 0, len(c.pending))
		for id := range c.pending {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			cn.wbuf = append(cn.wbuf, c.pending[id].frame...)
		}
	}
	// Wake a reader before writing: the resent volume may exceed what the
	// socket buffers hold, and the daemon stops reading when nobody reads
	// its answers.
	c.wakeReader()
	if len(cn.wbuf) > 0 {
		c.flush(cn)
	}
}

// readLimit bounds the answers read: the daemon keeps them within its
// max_frame, which may be configured above the default, and is learnt from
// hello; until then a generous cap keeps a large answer from breaking the
// connection.
func (c *Client) readLimit() int {
	return int(max(c.maxFrame.Load(), minReadLimit))
}

const minReadLimit = 16 << 20

// learn records what the daemon's hello tells the Client. mu held.
func (c *Client) learn(resp *protocol.Response) {
	c.backoff = 0 // this connection works
	var h protocol.HelloResult
	if resp.OK && protocol.DecodeResult(resp.Result, &h) == nil && h.MaxFrame > 0 {
		c.maxFrame.Store(int64(h.MaxFrame))
	}
}
