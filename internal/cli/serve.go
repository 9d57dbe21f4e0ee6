package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/gcpace"
	"github.com/moat-iot/moat/internal/hub"
)

func serveCmd() *cobra.Command {
	var (
		cfgPath, dataDir, hostName, logLevel string
		mqttAddr, httpsAddr, plainAddr       string
		metricsAddr                          string
	)
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the hub",
		Long: `Run the hub with embedded defaults: SQLite registry and queues in the data
directory, a private CA and server certificate created on first start, MQTT over
TLS on 8883, HTTPS (service API and MQTT over WebSockets) on 443. Plain MQTT is
off unless --mqtt-plain-addr is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := config.Default()
			if cfgPath != "" {
				var err error
				if cfg, err = config.Load(cfgPath); err != nil {
					return err
				}
			}
			f := cmd.Flags()
			if f.Changed("data-dir") || cfg.Moat.DataDir == "" {
				cfg.Moat.DataDir = dataDir
			}
			if f.Changed("hostname") || cfg.Properties.HostName == "" {
				cfg.Properties.HostName = hostName
			}
			if f.Changed("log-level") {
				cfg.Moat.LogLevel = logLevel
			}
			set := func(flag string, v string, dst **string) {
				if f.Changed(flag) {
					*dst = &v
				}
			}
			set("mqtt-addr", mqttAddr, &cfg.Moat.Listeners.MQTT)
			set("https-addr", httpsAddr, &cfg.Moat.Listeners.HTTPS)
			set("mqtt-plain-addr", plainAddr, &cfg.Moat.Listeners.MQTTPlain)
			set("metrics-addr", metricsAddr, &cfg.Moat.Listeners.Metrics)
			if err := cfg.Validate(); err != nil {
				return err
			}
			log, err := newLogger(cfg.Moat.LogLevel)
			if err != nil {
				return err
			}
			h, err := hub.New(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			paced := make(chan struct{})
			go func() {
				defer close(paced)
				gcpace.Run(ctx, gcpace.Options{Arrivals: h.SessionsEstablished})
			}()
			defer func() { cancel(); <-paced }()
			return h.Run(ctx)
		},
	}
	f := c.Flags()
	f.StringVar(&cfgPath, "config", "", "configuration file (YAML or JSON, IoT Hub resource shape)")
	f.StringVar(&dataDir, "data-dir", config.DefaultDataDir, "data directory")
	f.StringVar(&hostName, "hostname", config.DefaultHostName, "host name devices and services use (no port)")
	f.StringVar(&mqttAddr, "mqtt-addr", config.DefaultMQTT, "MQTT over TLS listen address (\"\" disables)")
	f.StringVar(&httpsAddr, "https-addr", config.DefaultHTTPS, "HTTPS listen address: service API and MQTT over WebSockets (\"\" disables)")
	f.StringVar(&plainAddr, "mqtt-plain-addr", "", "plain-text MQTT listen address (off unless set)")
	f.StringVar(&metricsAddr, "metrics-addr", config.DefaultMetrics, "Prometheus /metrics listen address (\"\" disables)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return c
}
