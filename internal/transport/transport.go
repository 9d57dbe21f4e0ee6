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
	"syscall"
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
	conns *Conns
}

func (l *admitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.admit == nil || l.admit(l.name, c.LocalAddr(), c.RemoteAddr()) {
			if l.conns != nil {
				return l.conns.add(l.name, c), nil
			}
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

// TrackedListener is Listener that also registers every admitted connection
// in conns until it is closed, so that a later policy change can close it.
// Tracking happens at the socket, under TLS, HTTP and WebSockets, so every
// kind of connection (MQTT streams, HTTP keep-alive connections, hijacked
// WebSocket connections) is covered without the protocols knowing.
func TrackedListener(ln net.Listener, name string, admit Admit, conns *Conns) net.Listener {
	return &admitListener{Listener: ln, name: name, admit: admit, conns: conns}
}

// Conns is the set of live admitted connections of every tracked listener.
type Conns struct {
	mu sync.Mutex
	m  map[*trackedConn]struct{}
}

// NewConns returns an empty set.
func NewConns() *Conns { return &Conns{m: map[*trackedConn]struct{}{}} }

// Len is the number of live tracked connections.
func (cs *Conns) Len() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return len(cs.m)
}

// Recheck asks keep about every live connection and closes each one it
// refuses, returning how many it closed. Closing the socket ends whatever
// runs on it (the broker's client, an HTTP keep-alive connection, a
// WebSocket) at its next read or write, which is at once for a blocked read.
func (cs *Conns) Recheck(keep Admit) int {
	cs.mu.Lock()
	live := make([]*trackedConn, 0, len(cs.m))
	for c := range cs.m {
		live = append(live, c)
	}
	cs.mu.Unlock()
	n := 0
	for _, c := range live {
		if !keep(c.listener, c.LocalAddr(), c.RemoteAddr()) {
			_ = c.Close()
			n++
		}
	}
	return n
}

func (cs *Conns) add(listener string, c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c, listener: listener, set: cs}
	cs.mu.Lock()
	cs.m[tc] = struct{}{}
	cs.mu.Unlock()
	return tc
}

// trackedConn leaves its set when closed, by whoever closes it first.
type trackedConn struct {
	net.Conn
	listener string
	set      *Conns
	once     sync.Once
}

// SyscallConn gives the socket itself, so that a reader can wait for data
// without a read in progress (mochi's idle wait).
func (c *trackedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.set.mu.Lock()
		delete(c.set.m, c)
		c.set.mu.Unlock()
	})
	return c.Conn.Close()
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
			if s.TLS == nil {
				// Straight to the handler: another frame would stay under
				// a quiet connection's wait and keep its stack from
				// shrinking to 2 KiB (see mochi's idle wait).
				s.handle(c)
				return
			}
			s.serveTLS(ctx, c)
		}()
	}
}

// serveTLS completes c's TLS handshake and hands the connection to the
// handler on a goroutine of its own.
func (s *StreamServer) serveTLS(ctx context.Context, c net.Conn) {
	tc := tls.Server(c, s.TLS)
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.Log.Debug("TLS handshake failed", "listener", s.Name, "remote", c.RemoteAddr().String(), "error", err)
		_ = c.Close()
		return
	}
	// The handshake's key exchange and signature grow this goroutine's
	// stack to tens of KiB, and an idle connection would keep that for
	// good. The long-lived reader starts on a fresh, small stack instead.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.handle(tc)
	}()
}

func (s *StreamServer) handle(c net.Conn) {
	if err := s.Handler(c, s.Name); err != nil {
		s.Log.Debug("connection ended", "listener", s.Name, "remote", c.RemoteAddr().String(), "error", err)
	}
	// The handler normally closed it; closing again makes sure a tracked
	// connection leaves its set whatever the handler did.
	_ = c.Close()
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
