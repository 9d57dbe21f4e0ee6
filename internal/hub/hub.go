// Package hub is the composition root: it builds every part of a Moat hub from
// the configuration — stores, PKI, registry, broker, service API, listeners —
// starts them in order and stops them in reverse.
package hub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/moat-iot/moat/internal/audit"
	"github.com/moat-iot/moat/internal/c2d"
	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/configurations"
	"github.com/moat-iot/moat/internal/dnszone"
	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/events"
	"github.com/moat-iot/moat/internal/jobs"
	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/mqttdevice"
	"github.com/moat-iot/moat/internal/msglog"
	"github.com/moat-iot/moat/internal/netapi"
	"github.com/moat-iot/moat/internal/netpolicy"
	"github.com/moat-iot/moat/internal/pki"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/registry/sqlitestore"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/serviceapi"
	"github.com/moat-iot/moat/internal/session"
	"github.com/moat-iot/moat/internal/transport"
)

// Hub is a running hub's parts.
type Hub struct {
	cfg      *config.Config
	log      *slog.Logger
	hostName string
	dataDir  string

	ca       *pki.Authority
	policies []sas.Policy
	store    *sqlitestore.Store
	c2dStore *c2d.SQLiteStore
	sessions *session.SQLiteStore
	registry *registry.Registry
	c2d      *c2d.Queue
	events   *events.Stream
	msglog   *msglog.PebbleLog
	// decoded and routed are shared by the endpoint workers reading msglog.
	decoded *endpoint.DecodedRecords
	routed  routedRecords

	dnsStore *dnszone.Store
	dns      *dnszone.Server
	// dnsEndpoints are the private endpoints last given to the DNS zone group.
	dnsSyncMu    sync.Mutex
	dnsEndpoints map[string]bool

	// network is the live network policy; conns the admitted connections
	// it re-decides on every change (network.go).
	network *netpolicy.Engine
	audit   *audit.Recorder
	conns   *transport.Conns

	connSeq atomic.Uint64 // sequence numbers of connection state events
	// connPending holds each identity's latest connection change until the
	// next snapshot (every connSnapshot; 0 publishes changes at once).
	connMu       sync.Mutex
	connPending  map[[2]string]connChange
	connSnapshot time.Duration
	// routing is the routing in force, replaced whole on each change;
	// routingChange serialises changes (routes.go, routingmgmt.go).
	routing       atomic.Pointer[routingState]
	routingChange sync.Mutex
	// delivery runs one worker per endpoint.
	delivery *endpoint.Group
	// deadLetterLog is each custom endpoint's dead-letter store by name.
	deadLetterMu  sync.Mutex
	deadLetterLog map[string]*msglog.PebbleLog
	// retryPeriod is how long endpoints retry before dead-lettering (0: the
	// endpoint package's default, IoT Hub's hour).
	retryPeriod time.Duration
	methods     *methods.Invoker
	broker      *mqttdevice.Broker
	api         *serviceapi.Server
	jobs        *jobs.Service
	configs     *configurations.Service
	metrics     *prometheus.Registry

	telemetry prometheus.Counter

	// ready is closed once Run has bound every listener; addrs then holds
	// the bound address of each listener by name ("mqtts", "https", …).
	ready chan struct{}
	addrs map[string]string
}

// New opens the hub's state in the data directory, creating the CA, the server
// certificate and the default policies on first start.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Hub, error) {
	h := &Hub{cfg: cfg, log: log, ready: make(chan struct{}), addrs: map[string]string{}}
	// Sequence numbers of connection state events keep increasing across
	// restarts, as IoT Hub's do.
	h.connSeq.Store(uint64(time.Now().UnixNano()))
	h.connPending = map[[2]string]connChange{}
	var err error
	if h.connSnapshot, err = cfg.Moat.Routing.ConnectionStateSnapshotPeriod(); err != nil {
		return nil, fmt.Errorf("moat.routing.connectionStateSnapshot: %w", err)
	}
	h.hostName = cfg.Properties.HostName
	if h.hostName == "" {
		h.hostName = config.DefaultHostName
	}
	h.dataDir = cfg.Moat.DataDir
	if h.dataDir == "" {
		h.dataDir = config.DefaultDataDir
	}
	if err := os.MkdirAll(h.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}

	names, ips := certificateNames(h.hostName, cfg.Moat.CertificateNames)
	ca, err := pki.LoadOrCreate(filepath.Join(h.dataDir, "pki"), names, ips)
	if err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	h.ca = ca

	policies, created, err := loadOrCreatePolicies(h.dataDir)
	if err != nil {
		return nil, fmt.Errorf("shared access policies: %w", err)
	}
	if len(cfg.Properties.AuthorizationPolicies) > 0 {
		policies = cfg.Properties.AuthorizationPolicies
	}
	h.policies = policies
	if created {
		log.Info("created shared access policies", "file", filepath.Join(h.dataDir, stateFile))
	}

	h.store, err = sqlitestore.Open(ctx, filepath.Join(h.dataDir, "registry.db"))
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	h.c2dStore, err = c2d.OpenSQLite(ctx, filepath.Join(h.dataDir, "c2d.db"))
	if err != nil {
		h.store.Close()
		return nil, fmt.Errorf("cloud-to-device store: %w", err)
	}
	h.sessions, err = session.OpenSQLite(ctx, filepath.Join(h.dataDir, "sessions.db"))
	if err != nil {
		h.close()
		return nil, fmt.Errorf("session store: %w", err)
	}
	// Every accepted device-to-cloud message is appended here, durably,
	// before the device gets its PUBACK. Run trims it behind the slowest
	// endpoint every 250 ms, so it holds what some endpoint still owes.
	// The log's histograms are registered with the others below; the log
	// reports to them from its first commit.
	logWait := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "moat_log_commit_wait_seconds",
		Help:    "Per group commit of the durable message log, from its first append to durability: the longest any message of the commit waited before its PUBACK could be sent.",
		Buckets: prometheus.ExponentialBuckets(125e-6, 2, 11), // 125 µs … 128 ms
	})
	logSync := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "moat_log_sync_seconds",
		Help:    "Per group commit of the durable message log, the write and fsync of its batch.",
		Buckets: prometheus.ExponentialBuckets(125e-6, 2, 11),
	})
	h.msglog, err = msglog.OpenPebble(filepath.Join(h.dataDir, "log"), msglog.PebbleOptions{
		Logger: log.With("component", "msglog"),
		OnCommit: func(_ int, wait, sync time.Duration) {
			logWait.Observe(wait.Seconds())
			logSync.Observe(sync.Seconds())
		},
	})
	if err != nil {
		h.close()
		return nil, fmt.Errorf("message log: %w", err)
	}
	h.decoded, h.routed = endpoint.NewDecodedRecords(), newRoutedRecords()
	h.events = events.New()
	h.c2d = c2d.New(h.c2dStore, log.With("component", "c2d"), nil)

	// The registry calls the broker back; the broker is built after it.
	var broker *mqttdevice.Broker
	h.registry = registry.New(h.store, registry.Options{
		HubName: h.hostName,
		OnDesiredChange: func(d, m string, v int64, patch map[string]any) {
			if broker != nil {
				broker.DesiredChanged(d, m, v, patch)
			}
		},
		OnTwinChange: func(d, m, op string, body map[string]any) {
			if h.msglog != nil {
				h.twinChanged(d, m, op, body)
			}
		},
		WantTwinChanges: h.wantsTwinChanges,
		OnLifecycle: func(d, m string, created bool) {
			if h.msglog != nil {
				h.lifecycleChanged(d, m, created)
			}
		},
		OnIdentityChange: func(d, m string) {
			if broker != nil {
				broker.IdentityChanged(d, m)
			}
		},
	})

	if err := h.registry.ResetConnections(ctx); err != nil {
		h.close()
		return nil, err
	}
	if err := h.buildRouting(); err != nil {
		h.close()
		return nil, fmt.Errorf("routing: %w", err)
	}

	h.metrics = prometheus.NewRegistry()
	// The scheduler-latency histogram (time goroutines wait runnable for a
	// core) tells a hub short of CPU from one waiting on its disk or peers.
	h.metrics.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsScheduler)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := h.buildNetwork(); err != nil {
		h.close()
		return nil, fmt.Errorf("network policy: %w", err)
	}
	h.metrics.MustRegister(h.audit.Collectors()...)
	if h.dnsStore, err = dnszone.OpenStore(h.dataDir); err != nil {
		h.close()
		return nil, fmt.Errorf("dns zones: %w", err)
	}
	if h.dns, err = dnszone.NewServer(cfg.Moat.DNS.Options(h.hostName, h.dnsStore, log.With("component", "dns"))); err != nil {
		h.close()
		return nil, fmt.Errorf("dns: %w", err)
	}
	for _, c := range h.dns.Collectors() {
		h.metrics.MustRegister(c)
	}
	h.syncPrivateDNS()
	h.telemetry = prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_telemetry_messages_total", Help: "Device-to-cloud messages accepted."})
	h.metrics.MustRegister(h.telemetry)
	h.metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "moat_log_last_offset", Help: "Offset of the last message in the durable message log."}, func() float64 { return float64(h.msglog.Last()) }))
	h.metrics.MustRegister(logWait, logSync)
	h.metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "moat_log_commits_total", Help: "Group commits (one fsync each) of the durable message log; moat_log_last_offset over this is the messages per fsync."}, func() float64 { return float64(h.msglog.Stats().Commits) }))

	var transportRef methodTransport
	h.methods = methods.New(&transportRef)
	broker, err = mqttdevice.New(mqttdevice.Config{
		HostName:           h.hostName,
		Registry:           h.registry,
		Policies:           h.Policies,
		Methods:            h.methods,
		C2D:                h.c2d,
		Accept:             h.accept,
		AcceptAsync:        h.acceptAsync,
		OnConnectionChange: h.connectionChanged,
		Sessions:           h.sessions,
		ClientCAs:          ca.CAPool(),
		Log:                log.With("component", "mqtt"),
	})
	if err != nil {
		h.close()
		return nil, err
	}
	h.broker = broker
	transportRef.b = broker
	h.c2d.SetNotify(broker.Notify)
	h.metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "moat_connected_devices", Help: "Authenticated MQTT connections."}, func() float64 { return float64(broker.Connected()) }))

	if h.jobs, err = jobs.Open(ctx, h.dataDir, jobs.Options{Registry: h.registry, Methods: h.methods, Log: log.With("component", "jobs")}); err != nil {
		h.close()
		return nil, fmt.Errorf("jobs: %w", err)
	}
	if h.configs, err = configurations.Open(ctx, h.dataDir, configurations.Options{Registry: h.registry, Log: log.With("component", "configurations")}); err != nil {
		h.close()
		return nil, fmt.Errorf("configurations: %w", err)
	}
	h.api = serviceapi.New(serviceapi.Config{
		HostName:         h.hostName,
		Policies:         h.Policies,
		Registry:         h.registry,
		Methods:          h.methods,
		C2D:              h.c2d,
		Events:           h.events,
		Log:              log.With("component", "serviceapi"),
		ConnectedDevices: broker.Connected,
		Jobs:             h.jobs,
		Configurations:   h.configs,
	})
	for _, c := range h.api.Collectors() {
		h.metrics.MustRegister(c)
	}
	return h, nil
}

// methodTransport breaks the construction cycle between the method invoker and
// the broker.
type methodTransport struct{ b *mqttdevice.Broker }

func (t *methodTransport) SendMethod(d, m, name, rid string, payload []byte) error {
	return t.b.SendMethod(d, m, name, rid, payload)
}

// Ready is closed once Run has bound all its listeners (never, if Run fails
// before that); Addrs is then complete.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Addrs returns the bound address of each listener by name ("mqtts", "mqtt",
// "https", "metrics"), so that listeners configured on port 0 can be found.
// It is complete once Ready is closed.
func (h *Hub) Addrs() map[string]string {
	select {
	case <-h.ready:
		return maps.Clone(h.addrs)
	default:
		return nil
	}
}

// Authority returns the hub's private CA (for issuing device client
// certificates).
func (h *Hub) Authority() *pki.Authority { return h.ca }

// Policies returns the shared access policies in force.
func (h *Hub) Policies() []sas.Policy { return h.policies }

// SessionsEstablished counts device connections authenticated and set up
// since the hub started; the GC pacer tells a connect storm by it.
func (h *Hub) SessionsEstablished() uint64 { return h.broker.SessionsEstablished() }

// accept takes a device's telemetry: it returns once the message is in the
// durable log (so the PUBACK that follows means "on disk"), then hands it to
// the live events stream.
// acceptAsync is accept without waiting, for the broker's hot path: the log
// group-commits many devices' messages per fsync and calls back once each is
// durable.
func (h *Hub) acceptAsync(m message.Message, done func(error)) {
	rec, err := msglog.EncodeMessage(m)
	if err != nil {
		done(fmt.Errorf("accept message: %w", err))
		return
	}
	h.msglog.AppendAsync(rec, func(_ uint64, err error) {
		if err != nil {
			done(fmt.Errorf("accept message: %w", err))
			return
		}
		h.telemetry.Inc()
		done(nil)
	})
}

func (h *Hub) accept(ctx context.Context, m message.Message) error {
	rec, err := msglog.EncodeMessage(m)
	if err != nil {
		return fmt.Errorf("accept message: %w", err)
	}
	if _, err := h.msglog.Append(ctx, rec); err != nil {
		return fmt.Errorf("accept message: %w", err)
	}
	h.telemetry.Inc()
	return nil
}

func certificateNames(host string, extra []string) ([]string, []net.IP) {
	names := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, n := range append([]string{host}, extra...) {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else if n != "" && !strings.EqualFold(n, "localhost") {
			names = append(names, n)
		}
	}
	return names, ips
}

func (h *Hub) tlsConfig() *tls.Config {
	cert := h.ca.ServerCertificate()
	min := uint16(tls.VersionTLS12)
	if h.cfg.Properties.MinTLSVersion == "1.3" {
		min = tls.VersionTLS13
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   min,
		// X.509 devices present a certificate; the MQTT layer decides, so that an
		// unknown certificate is refused with CONNACK 5 rather than a TLS alert.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"http/1.1"},
	}
}

// Run starts every listener and serves until ctx ends, then shuts down.
func (h *Hub) Run(ctx context.Context) error {
	defer h.close()
	if err := h.broker.Start(); err != nil {
		return err
	}
	l := h.cfg.Moat.Listeners
	tlsConf := h.liveTLS(h.tlsConfig())
	// Every listener is admitted by the network policy before TLS and
	// tracked, so that a policy change closes what it no longer admits.
	admit := transport.Admit(h.admit)
	defer h.network.Subscribe(h.recheckConnections)()
	defer h.network.Subscribe(h.syncPrivateDNS)()

	var lns []net.Listener
	listen := func(name, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return nil, fmt.Errorf("listen %s on %s: %w", name, addr, err)
		}
		lns = append(lns, ln)
		return transport.TrackedListener(ln, name, admit, h.conns), nil
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := h.jobs.Start(runCtx); err != nil {
		return err
	}
	if err := h.configs.Start(runCtx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	ready := []any{}
	if err := h.dns.Start(runCtx); err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	defer h.dns.Close()
	if a := h.dns.Addr(); a != nil {
		ready = append(ready, "dns", a.String())
	}
	// Endpoint workers read the log until shutdown; they stop before the log
	// closes (close runs after Run's wait).
	var workers sync.WaitGroup
	defer func() { cancel(); workers.Wait() }()
	workers.Add(2)
	go func() {
		defer workers.Done()
		h.trimLog(runCtx)
	}()
	go func() {
		defer workers.Done()
		h.publishConnectionStates(runCtx)
	}()
	h.delivery.Start(runCtx)
	defer func() { cancel(); h.delivery.Wait() }()

	if a := config.Addr(l.MQTT, config.DefaultMQTT); a != "" {
		ln, err := listen("mqtts", a)
		if err != nil {
			return err
		}
		s := &transport.StreamServer{Name: "mqtts", TLS: tlsConf, Handler: h.broker.ServeConn, Log: h.log}
		wg.Add(1)
		go func() { defer wg.Done(); errc <- s.Serve(runCtx, ln) }()
		ready = append(ready, "mqtts", ln.Addr().String())
	}
	if a := config.Addr(l.MQTTPlain, ""); a != "" {
		ln, err := listen("mqtt", a)
		if err != nil {
			return err
		}
		s := &transport.StreamServer{Name: "mqtt", Handler: h.broker.ServeConn, Log: h.log}
		wg.Add(1)
		go func() { defer wg.Done(); errc <- s.Serve(runCtx, ln) }()
		ready = append(ready, "mqtt", ln.Addr().String())
	}
	var servers []*http.Server
	if a := config.Addr(l.HTTPS, config.DefaultHTTPS); a != "" {
		ln, err := listen("https", a)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle(transport.WebSocketPath, transport.WebSocketHandler("wss", h.broker.ServeConn, h.log))
		mux.Handle(dnszone.APIPrefix, h.dnsStore.Handler(h.authorizeManagement))
		mux.Handle(EndpointHealthPath, h.endpointHealthHandler())
		mux.Handle(DeadLettersPrefix, h.deadLettersHandler())
		mux.Handle(RoutingPath, h.routingHandler())
		mux.Handle(RoutingPath+"/", h.routingHandler())
		netAPI := h.networkAPI()
		mux.Handle(netapi.Prefix, netAPI)
		mux.Handle(netapi.Prefix+"/", netAPI)
		mux.Handle("/", h.api)
		srv := &http.Server{Handler: mux, TLSConfig: tlsConf, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelDebug)}
		srv.RegisterOnShutdown(h.api.Close) // live event streams would hold Shutdown open
		servers = append(servers, srv)
		wg.Add(1)
		go func() { defer wg.Done(); errc <- ignoreClosed(srv.Serve(tls.NewListener(ln, tlsConf))) }()
		ready = append(ready, "https", ln.Addr().String())
		if err := writeEndpoint(h.dataDir, Endpoint{HostName: h.hostName, HTTPSAddress: ln.Addr().String()}); err != nil {
			return err
		}
	}
	if a := config.Addr(l.Metrics, config.DefaultMetrics); a != "" {
		ln, err := listen("metrics", a)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(h.metrics, promhttp.HandlerOpts{}))
		if h.cfg.Moat.Profiling {
			// Profiles reveal message contents in memory; they are only on
			// the metrics listener (loopback by default) and only when asked.
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		wg.Add(1)
		go func() { defer wg.Done(); errc <- ignoreClosed(srv.Serve(ln)) }()
		ready = append(ready, "metrics", ln.Addr().String())
	}
	for i := 0; i+1 < len(ready); i += 2 {
		h.addrs[ready[i].(string)] = ready[i+1].(string)
	}
	close(h.ready)
	h.log.Info("moat hub ready", append([]any{"hostName", h.hostName, "dataDir", h.dataDir, "ca", h.ca.Paths().CACert}, ready...)...)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	h.log.Info("shutting down")
	cancel()
	for _, ln := range lns {
		ln.Close()
	}
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shutCancel()
	for _, s := range servers {
		_ = s.Shutdown(shutCtx)
	}
	if err := h.broker.Close(); err != nil {
		h.log.Warn("closing broker", "error", err)
	}
	wg.Wait()
	return runErr
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (h *Hub) close() {
	// Jobs and configurations write twins: they stop before the registry.
	if h.jobs != nil {
		h.jobs.Close()
	}
	if h.configs != nil {
		h.configs.Close()
	}
	if h.delivery != nil { // workers have stopped: Run waited for them
		for _, w := range h.delivery.Workers() {
			if err := w.Sink().Close(); err != nil {
				h.log.Warn("closing endpoint", "endpoint", w.Name(), "error", err)
			}
		}
	}
	for _, d := range h.deadLetterLog {
		d.Close()
	}
	if h.msglog != nil {
		st := h.msglog.Stats()
		h.log.Info("closing message log", "lastOffset", h.msglog.Last(), "commits", st.Commits, "appends", st.Appends)
		if err := h.msglog.Close(); err != nil {
			h.log.Warn("closing message log", "error", err)
		}
	}
	if h.c2dStore != nil {
		h.c2dStore.Close()
	}
	if h.sessions != nil {
		h.sessions.Close()
	}
	if h.store != nil {
		h.store.Close()
	}
	if h.audit != nil {
		_ = h.audit.Close()
	}
}

// authorizeManagement admits management calls (DNS zones) on the same terms
// as the network API: RegistryWrite, or RegistryRead for reads.
func (h *Hub) authorizeManagement(r *http.Request) error {
	return netapi.ServiceAuth(h.hostName, h.Policies, nil)(r, r.Method != http.MethodGet)
}
