package daemon

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/klockd/klock/daemon/metrics"
	"github.com/klockd/klock/daemon/server"
	"github.com/klockd/klock/daemon/web"
)

// serveHTTP starts serving --http (metrics and the dashboard) and returns
// the function that stops it.
func (d *Daemon) serveHTTP(srv *server.Server, m *metrics.Metrics) (stop func(), err error) {
	m.Serve(srv)
	ln, err := web.Listen(d.cfg.HTTP)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{
		Handler:           web.Handler(web.Config{Server: srv, Metrics: m.Handler(), Logger: d.log}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("serving http failed", "addr", ln.Addr().String(), "err", err)
		}
	}()
	d.log.Info("serving metrics and the dashboard", "http", ln.Addr().String(), "url", dashboardURL(ln.Addr().Network(), ln.Addr().String()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
		}
		<-done
	}, nil
}

// dashboardURL is where a person points a browser, for the log.
func dashboardURL(network, addr string) string {
	if network == "unix" {
		return "(unix socket " + addr + "; e.g. curl --unix-socket " + addr + " http://klockd/metrics)"
	}
	return "http://" + addr + "/"
}
