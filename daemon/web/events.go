package web

import (
	"bufio"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/server"
	"github.com/klockd/klock/protocol"
)

// events serves /events: the watch stream as Server-Sent Events, as the
// WHATWG HTML standard defines them ("Server-sent events", section 9.2:
// https://html.spec.whatwg.org/multipage/server-sent-events.html). Each
// event is an "event: <kind>" line naming it (grant, release, ...), a
// "data: <JSON>" line with the same keys as the watch op's events, and a
// blank line that dispatches it; lines starting with ":" are comments,
// sent as keep-alives. A "retry:" field sets how soon the browser
// reconnects. Query parameters prefix and agent filter as the watch op's.
//
// A browser that does not keep up is cut off like a slow watcher: a final
// "overflow" event, then the response ends (EventSource reconnects, and
// the page loads the state again).
type events struct {
	srv          *server.Server
	log          *slog.Logger
	writeTimeout time.Duration
}

// keepAliveEvery is how often an idle stream gets a comment line, so that
// proxies and the browser see it is alive.
const keepAliveEvery = 15 * time.Second

func (h *events) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sub, err := h.srv.Subscribe(server.WatchFilter{AgentID: q.Get("agent"), ResourcePrefix: q.Get("prefix")})
	if err != nil {
		code := http.StatusServiceUnavailable
		var ee *engine.Error
		if errors.As(err, &ee) && ee.Code == protocol.CodeInvalidArgument {
			code = http.StatusBadRequest
		}
		http.Error(w, err.Error(), code)
		return
	}
	defer h.srv.Unsubscribe(sub)

	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 16<<10)
	flush := func() bool {
		rc.SetWriteDeadline(time.Now().Add(h.writeTimeout))
		if bw.Flush() != nil || rc.Flush() != nil {
			return false
		}
		return true
	}
	bw.WriteString("retry: 1000\n: klockd event stream\n\n")
	if !flush() {
		return
	}
	keepAlive := time.NewTicker(keepAliveEvery)
	defer keepAlive.Stop()
	enc := json.NewEncoder(bw) // Encode ends each value with "\n"
	var batch []server.Watched
	var pace server.Pace
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepAlive.C:
			bw.WriteString(": keep-alive\n\n")
			if !flush() {
				return
			}
		case <-sub.Ready():
			// A batch: every event published since the last one (a
			// busy stream's batches are spaced, see server.Pace), shown
			// once the last of their changes is durable.
			var open bool
			pace.Gather(sub)
			batch, open = sub.Take(batch)
			var seq uint64
			for i := range batch {
				seq = max(seq, batch[i].Seq)
			}
			if err := h.srv.WaitDurable(seq); err != nil {
				return
			}
			for i := range batch {
				ev := server.WatchEvent(&batch[i].Event)
				bw.WriteString("event: " + ev.Event + "\ndata: ")
				enc.Encode(&ev)
				bw.WriteString("\n")
			}
			if !open {
				if sub.Overflowed() {
					h.log.Info("cut off a dashboard that fell behind its event stream", "remote", r.RemoteAddr)
					bw.WriteString("event: overflow\ndata: {}\n\n")
					flush()
				}
				return
			}
			if !flush() {
				return
			}
		}
	}
}
