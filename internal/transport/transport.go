// Package transport owns the hub's sockets: it accepts connections, asks the
// admission policy about each one before any TLS byte is exchanged, terminates
// TLS, and hands MQTT streams (raw or inside WebSockets) and HTTP requests to
// their protocol handlers. Every listener goes through the same admission
// path, so a listener added later is covered by network policy too.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Admit decides whether a connection may proceed, from addresses alone, before
// TLS. It returns false to close the connection at once.
type Admit func(listener string, local, remote net.Addr) bool

// handshakeTimeout bounds how long an accepted socket may take to finish TLS.
const handshakeTimeout = 10 * time.Second

// admitListener filters Accept through Admit.
type admitListener struct {
	net.Listener
	name  string
	admit Admit
}

func (l *admitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.admit == nil || l.admit(l.name, c.LocalAddr(), c.RemoteAddr()) {
			return c, nil
		}
		_ = c.Close()
	}
}

// Listener wraps ln so that connections refused by admit are closed before
// they are returned.
func Listener(ln net.Listener, name string, admit Admit) net.Listener {
	return &admitListener{Listener: ln, name: name, admit: admit}
}

// StreamHandler serves one client stream until it ends.
type StreamHandler func(c net.Conn, listener string) error

// StreamServer accepts MQTT connections on one listener.
type StreamServer struct {
	Name    string
	TLS     *tls.Config // nil for plain TCP
	Handler StreamHandler
	Log     *slog.Logger

	wg sync.WaitGroup
}

// Serve accepts until ln is closed or ctx ends. Connections already running
// are closed by the handler's owner (the broker) on shutdown.
func (s *StreamServer) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			s.wg.Wait()
			return fmt.Errorf("accept on %s: %w", s.Name, err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

func (s *StreamServer) serveConn(ctx context.Context, c net.Conn) {
	if s.TLS != nil {
		tc := tls.Server(c, s.TLS)
		hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			s.Log.Debug("TLS handshake failed", "listener", s.Name, "remote", c.RemoteAddr().String(), "error", err)
			_ = c.Close()
			return
		}
		c = tc
	}
	if err := s.Handler(c, s.Name); err != nil {
		s.Log.Debug("connection ended", "listener", s.Name, "remote", c.RemoteAddr().String(), "error", err)
	}
}

// WebSocketPath is where IoT Hub serves MQTT (and AMQP) over WebSockets.
const WebSocketPath = "/$iothub/websocket"

// WebSocketHandler upgrades requests for the "mqtt" subprotocol and hands the
// stream to h. Other subprotocols (AMQP) are refused with 400.
func WebSocketHandler(listener string, h StreamHandler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			Subprotocols:    []string{"mqtt"},
			CompressionMode: websocket.CompressionDisabled,
		})
		if err != nil {
			log.Debug("websocket upgrade failed", "remote", r.RemoteAddr, "error", err)
			return
		}
		if ws.Subprotocol() != "mqtt" {
			_ = ws.Close(websocket.StatusPolicyViolation, "unsupported subprotocol")
			return
		}
		ws.SetReadLimit(1 << 20)
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		nc := &wsConn{Conn: websocket.NetConn(ctx, ws, websocket.MessageBinary), remote: addr(r.RemoteAddr), tls: r.TLS}
		if err := h(nc, listener); err != nil {
			log.Debug("websocket connection ended", "remote", r.RemoteAddr, "error", err)
		}
	})
}

// wsConn carries the HTTP request's peer address and TLS state to the MQTT
// layer, which authenticates X.509 devices from the client certificate.
type wsConn struct {
	net.Conn
	remote net.Addr
	tls    *tls.ConnectionState
}

func (c *wsConn) RemoteAddr() net.Addr { return c.remote }

func (c *wsConn) ConnectionState() tls.ConnectionState {
	if c.tls == nil {
		return tls.ConnectionState{}
	}
	return *c.tls
}

type addr string

func (a addr) Network() string { return "tcp" }
func (a addr) String() string  { return string(a) }
