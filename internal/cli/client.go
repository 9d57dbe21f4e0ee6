package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/sas"
	"github.com/moat-iot/moat/internal/serviceapi"
)

// target is how a client command reaches a hub.
type target struct {
	dataDir, login, ca, address string
}

func (t *target) flags(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVar(&t.dataDir, "data-dir", config.DefaultDataDir, "a local hub's data directory (owner policy, CA and address)")
	f.StringVar(&t.login, "login", "", "service connection string (instead of --data-dir's owner policy)")
	f.StringVar(&t.ca, "ca", "", "CA certificate PEM to trust (default: the data directory's CA)")
	f.StringVar(&t.address, "address", "", "host:port of the service API (default: HostName:443, or what the local hub recorded)")
}

// ownerConnectionString builds a policy connection string from a data directory.
func ownerConnectionString(dataDir, policy string) (string, error) {
	pols, err := hub.LoadPolicies(dataDir)
	if err != nil {
		return "", err
	}
	ep, err := hub.ReadEndpoint(dataDir)
	if err != nil {
		return "", err
	}
	for _, p := range pols {
		if p.KeyName == policy {
			return fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", ep.HostName, p.KeyName, p.PrimaryKey), nil
		}
	}
	return "", fmt.Errorf("no shared access policy %q in %s", policy, dataDir)
}

// credentials resolves the connection string, the REST address override and
// the CA pool a client command uses.
func (t *target) credentials() (cs, address string, pool *x509.CertPool, err error) {
	cs, address = t.login, t.address
	if cs == "" {
		if cs, err = ownerConnectionString(t.dataDir, "iothubowner"); err != nil {
			return "", "", nil, err
		}
		if address == "" {
			if ep, err := hub.ReadEndpoint(t.dataDir); err == nil {
				address = ep.HTTPSAddress
			}
		}
	}
	caFile := t.ca
	if caFile == "" && t.login == "" {
		caFile = filepath.Join(t.dataDir, "pki", "ca.pem")
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return "", "", nil, fmt.Errorf("read CA: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return "", "", nil, errors.New("no certificate in the CA file " + caFile)
		}
	}
	return cs, address, pool, nil
}

func (t *target) client() (*serviceapi.Client, error) {
	cs, address, pool, err := t.credentials()
	if err != nil {
		return nil, err
	}
	return serviceapi.NewClient(cs, serviceapi.ClientOptions{Address: address, RootCAs: pool})
}

// management returns what the hub's management APIs (DNS zones, network
// policy) need: the base URL, an HTTP client that trusts the hub's CA and
// dials the recorded address, and a signer with the policy's key.
func (t *target) management() (string, *http.Client, func(*http.Request) error, error) {
	cs, address, pool, err := t.credentials()
	if err != nil {
		return "", nil, nil, err
	}
	conn, err := serviceapi.ParseConnectionString(cs)
	if err != nil {
		return "", nil, nil, err
	}
	serverName := conn.HostName
	if h, _, err := net.SplitHostPort(conn.HostName); err == nil {
		serverName = h
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if address != "" {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		}
	}
	sign := func(r *http.Request) error {
		tok, err := sas.Sign(conn.HostName, conn.SharedAccessKeyName, conn.SharedAccessKey, time.Now().Add(time.Hour))
		if err != nil {
			return err
		}
		r.Header.Set("Authorization", tok)
		return nil
	}
	return "https://" + conn.HostName, &http.Client{Transport: tr, Timeout: time.Minute}, sign, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
