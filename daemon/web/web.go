package web

import (
	_ "embed"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/klockd/klock/daemon/server"
)

//go:embed index.html
var indexHTML []byte

// Config says what the HTTP side serves.
type Config struct {
	Server  *server.Server
	Metrics http.Handler // /metrics; nil: not served
	Logger  *slog.Logger // nil = slog.Default()
	// WriteTimeout cuts off a browser whose /events stream has not taken a
	// write for this long; 0 = server.DefaultWriteTimeout.
	WriteTimeout time.Duration
}

// Handler returns the routes: / (the dashboard), /api/state, /events and
// /metrics. Every route is read-only; only GET and HEAD are allowed.
func Handler(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = server.DefaultWriteTimeout
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		// The page loads nothing from anywhere but this origin.
		h.Set("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:")
		h.Set("X-Content-Type-Options", "nosniff")
		w.Write(indexHTML)
	})
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, r *http.Request) {
		st, err := cfg.Server.State()
		if err == nil {
			err = cfg.Server.WaitDurable(st.Seq)
		}
		if err != nil {
			http.Error(w, "klock: the state cannot be shown: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(&st)
	})
	mux.Handle("GET /events", &events{srv: cfg.Server, log: cfg.Logger, writeTimeout: cfg.WriteTimeout})
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	return mux
}
