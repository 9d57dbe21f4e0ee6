package mqttdevice

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
)

// connState is what an authenticated connection carries.
type connState struct {
	id         identity
	authMethod string // "sas", "x509"
	token      *sas.Token
	genID      string
	expiry     *time.Timer  // token expiry disconnect; nil for X.509
	unacked    atomic.Int32 // telemetry handed to the log, not yet acknowledged
	// c2dReady: the device holds a devicebound subscription it has been told
	// of — restored with the session, or its SUBACK written — so that no
	// cloud-to-device message overtakes the SUBACK. c2dSuback: a SUBACK
	// granting one is on its way.
	c2dReady, c2dSuback atomic.Bool
	// parked is an outbound PUBLISH stepped aside while a SUBSCRIBE with its
	// packet identifier is processed (hook.park); only the connection's
	// reading goroutine touches it.
	parked *parked
	mu     sync.Mutex
}

type parked struct {
	pk  packets.Packet
	dev *c2dDevice // its C2D pass lock is held while parked; nil for modules
}

func (s *connState) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.expiry != nil {
		s.expiry.Stop()
	}
}

// errNotAuthorized is every refusal: the reason goes to the log, never to the
// client, which sees CONNACK 5.
var errNotAuthorized = errors.New("not authorized")

type refusal struct{ reason string }

func (r *refusal) Error() string { return r.reason }

func refuse(format string, args ...any) error {
	return &refusal{reason: fmt.Sprintf(format, args...)}
}

// authenticate decides a CONNECT. It returns the session, or a *refusal whose
// text is for the log only.
func (b *Broker) authenticate(ctx context.Context, clientID string, user, password []byte, conn net.Conn) (*connState, error) {
	id, err := parseClientID(clientID)
	if err != nil {
		return nil, refuse("bad client id: %v", err)
	}
	u, err := parseUsername(string(user))
	if err != nil {
		return nil, refuse("bad user name: %v", err)
	}
	if u.ClientID != clientID {
		return nil, refuse("user name names %q, client id is %q", u.ClientID, clientID)
	}
	dev, err := b.cfg.Registry.GetDevice(ctx, id.DeviceID)
	if err != nil {
		if errcode.Is(err, errcode.DeviceNotFound) {
			return nil, refuse("device %q not registered", id.DeviceID)
		}
		return nil, fmt.Errorf("look up device: %w", err)
	}
	if dev.Status != registry.StatusEnabled {
		return nil, refuse("device %q is disabled", id.DeviceID)
	}
	auth, genID := dev.Authentication, dev.GenerationID
	if id.ModuleID != "" {
		mod, err := b.cfg.Registry.GetModule(ctx, id.DeviceID, id.ModuleID)
		if err != nil {
			if errcode.Is(err, errcode.ModuleNotFound) || errcode.Is(err, errcode.DeviceNotFound) {
				return nil, refuse("module %q not registered", clientID)
			}
			return nil, fmt.Errorf("look up module: %w", err)
		}
		auth, genID = mod.Authentication, mod.GenerationID
	}
	s := &connState{id: id, genID: genID}
	if len(password) > 0 {
		tok, err := sas.Parse(string(password))
		if err != nil {
			return nil, refuse("malformed SAS token: %v", err)
		}
		if err := b.verifyToken(tok, id, auth); err != nil {
			return nil, err
		}
		s.authMethod, s.token = "sas", &tok
		return s, nil
	}
	cert := peerCertificate(conn)
	if cert == nil {
		return nil, refuse("no SAS token and no client certificate")
	}
	if err := b.verifyCertificate(cert, id, auth); err != nil {
		return nil, err
	}
	s.authMethod = "x509"
	return s, nil
}

// verifyToken checks a device token against the identity's keys, or a policy
// token (skn present) against a policy with DeviceConnect.
func (b *Broker) verifyToken(tok sas.Token, id identity, auth registry.Authentication) error {
	now := b.cfg.Now()
	target := b.cfg.HostName + "/devices/" + id.DeviceID
	if id.ModuleID != "" {
		target += "/modules/" + id.ModuleID
	}
	if !tok.Covers(target) {
		return refuse("token scope does not cover %s", target)
	}
	if tok.KeyName != "" {
		for _, p := range b.cfg.Policies() {
			if p.KeyName != tok.KeyName {
				continue
			}
			if !p.Has(sas.DeviceConnect) {
				return refuse("policy %q lacks DeviceConnect", p.KeyName)
			}
			if err := verifyEither(tok, p.PrimaryKey, p.SecondaryKey, now); err != nil {
				return refuse("policy token for %q: %v", p.KeyName, err)
			}
			return nil
		}
		return refuse("unknown policy %q", tok.KeyName)
	}
	if auth.Type != registry.AuthSAS {
		return refuse("identity uses %s authentication, not SAS", auth.Type)
	}
	if err := verifyEither(tok, auth.SymmetricKey.PrimaryKey, auth.SymmetricKey.SecondaryKey, now); err != nil {
		return refuse("device token: %v", err)
	}
	return nil
}

func verifyEither(tok sas.Token, primary, secondary string, now time.Time) error {
	err := tok.Verify(primary, now)
	if err == nil || errors.Is(err, sas.ErrExpired) || secondary == "" {
		return err
	}
	return tok.Verify(secondary, now)
}

func (b *Broker) verifyCertificate(cert *x509.Certificate, id identity, auth registry.Authentication) error {
	switch auth.Type {
	case registry.AuthSelfSigned:
		s1 := sha1.Sum(cert.Raw)
		s256 := sha256.Sum256(cert.Raw)
		got := []string{hex.EncodeToString(s1[:]), hex.EncodeToString(s256[:])}
		for _, want := range []string{auth.X509Thumbprint.PrimaryThumbprint, auth.X509Thumbprint.SecondaryThumbprint} {
			want = strings.ToLower(strings.ReplaceAll(want, ":", ""))
			if want == "" {
				continue
			}
			for _, g := range got {
				if subtle.ConstantTimeCompare([]byte(g), []byte(want)) == 1 {
					return nil
				}
			}
		}
		return refuse("client certificate thumbprint matches neither registered thumbprint")
	case registry.AuthCertificateAuthority:
		if b.cfg.ClientCAs == nil {
			return refuse("no CA configured for certificateAuthority devices")
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: b.cfg.ClientCAs, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: b.cfg.Now()}); err != nil {
			return refuse("client certificate does not chain to a trusted CA: %v", err)
		}
		if cert.Subject.CommonName != id.clientID() && cert.Subject.CommonName != id.DeviceID {
			return refuse("client certificate CN %q is not %q", cert.Subject.CommonName, id.clientID())
		}
		return nil
	}
	return refuse("identity uses %s authentication, not X.509", auth.Type)
}

// peerCertificate finds the TLS client certificate under any wrappers.
func peerCertificate(c net.Conn) *x509.Certificate {
	for c != nil {
		if s, ok := c.(interface{ ConnectionState() tls.ConnectionState }); ok {
			if certs := s.ConnectionState().PeerCertificates; len(certs) > 0 {
				return certs[0]
			}
			return nil
		}
		u, ok := c.(interface{ Unwrap() net.Conn })
		if !ok {
			return nil
		}
		c = u.Unwrap()
	}
	return nil
}
