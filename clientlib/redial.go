package clientlib

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/klockd/klock/protocol"
)

// startRedial starts the redial loop unless it runs already. mu held.
func (c *Client) startRedial() {
	if c.dialing || c.closed {
		return
	}
	c.dialing = true
	c.bg.Add(1)
	go c.redial()
}

// redial dials until a connection is made, the Client is closed, or no call
// waits any more (every caller's context ended; the next call starts the
// loop again). Delays between attempts grow exponentially from 5 ms up to
// Options.MaxBackoff, with jitter so that many clients of a restarted daemon
// do not reconnect in lockstep. The delay is reset only once a connection
// has answered a request, so a daemon that accepts and at once closes (too
// many connections, a crash loop) is not redialled in a tight loop.
func (c *Client) redial() {
	defer c.bg.Done()
	for {
		c.mu.Lock()
		if c.closed || len(c.pending) == 0 {
			c.dialing = false
			c.mu.Unlock()
			return
		}
		delay := c.backoff
		c.backoff = min(max(2*delay, minBackoff), c.opts.MaxBackoff)
		c.mu.Unlock()

		if delay > 0 {
			// Jitter in [delay/2, delay].
			t := time.NewTimer(delay/2 + rand.N(delay/2+1))
			select {
			case <-c.life.Done():
				t.Stop()
				continue
			case <-c.redialKick:
				t.Stop()
			case <-t.C:
			}
		}
		nc, err := c.dialSocket(c.life, c.opts.Socket)
		c.mu.Lock()
		if err != nil {
			c.dialErr = err
			c.mu.Unlock()
			continue
		}
		c.dialing = false
		if c.closed {
			c.mu.Unlock()
			_ = nc.Close()
			return
		}
		c.connected(newConn(nc))
		c.mu.Unlock()
		return
	}
}

// redialNow makes the next redial attempt happen at once, cutting short
// the backoff sleep: a lease about to be declared lost gets one more try.
func (c *Client) redialNow() {
	c.mu.Lock()
	c.backoff = 0
	c.mu.Unlock()
	select {
	case c.redialKick <- struct{}{}:
	default:
	}
}

// releaseLate releases the leases of a grant that arrived after its caller
// gave up, so an abandoned acquire never leaves a lease held until its TTL
// runs out. mu held; the release runs in the background.
func (c *Client) releaseLate(raw []byte) {
	var res protocol.AcquireResult
	if err := protocol.DecodeResult(raw, &res); err != nil || !res.Success {
		return
	}
	ids := make([]string, 0, 1+len(res.Leases))
	if res.LeaseID != "" {
		ids = append(ids, res.LeaseID)
	}
	for _, g := range res.Leases {
		ids = append(ids, g.LeaseID)
	}
	if len(ids) == 0 || c.closed {
		return
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, id := range ids {
			_, _ = c.ReleaseLease(ctx, id)
		}
	}()
}
