// Package sas parses, signs and verifies IoT Hub shared access signatures, and
// holds the shared access policies and their rights. Verification computes the
// HMAC over the resource exactly as the token carries it and compares in
// constant time.
package sas

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Right is a shared-access-policy permission.
type Right string

// IoT Hub's four rights.
const (
	RegistryRead   Right = "RegistryRead"
	RegistryWrite  Right = "RegistryWrite"
	ServiceConnect Right = "ServiceConnect"
	DeviceConnect  Right = "DeviceConnect"
)

// allRights is the canonical order ParseRights reports rights in.
var allRights = [...]Right{RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect}

// Policy is a shared access policy (IoT Hub's authorizationPolicies entry).
type Policy struct {
	KeyName      string  `json:"keyName"`
	PrimaryKey   string  `json:"primaryKey"`
	SecondaryKey string  `json:"secondaryKey"`
	Rights       []Right `json:"rights"`
}

// Token is a parsed "SharedAccessSignature sr=…&sig=…&se=…[&skn=…]".
type Token struct {
	// Resource is sr exactly as sent (still URL-encoded): the HMAC input.
	Resource string
	// Signature is sig, URL-decoded (base64 text).
	Signature string
	// KeyName is skn, URL-decoded; "" for device keys.
	KeyName string
	// Expiry is se.
	Expiry time.Time

	// se is the expiry exactly as sent: the HMAC covers the text, and a client
	// may write it in a form (leading zeros) that formatting Expiry would lose.
	se string
}

// Sentinel errors; the errors returned wrap one of them with context, so test
// with errors.Is.
var (
	// ErrMalformed: the token text is not a shared access signature.
	ErrMalformed = errors.New("malformed shared access signature")
	// ErrExpired: the token is past its se.
	ErrExpired = errors.New("shared access signature expired")
	// ErrSignature: the signature does not match the key.
	ErrSignature = errors.New("shared access signature does not match")
	// ErrUnauthorized: VerifyService refused the token (unknown policy, scope
	// or signature); it deliberately does not say which.
	ErrUnauthorized = errors.New("shared access signature not authorized")
)

const (
	// MaxTokenLen bounds the token text; real tokens are a few hundred bytes.
	MaxTokenLen = 4096
	prefix      = "SharedAccessSignature "
	// maxDecodeRounds bounds Scope's repeated decoding (double encoding is
	// seen in the field; more than that is nonsense).
	maxDecodeRounds = 4
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("sas: %s: %w", fmt.Sprintf(format, args...), ErrMalformed)
}

// Parse parses a token. Errors say what is malformed and never echo the signature.
func Parse(s string) (Token, error) {
	if len(s) > MaxTokenLen {
		return Token{}, malformed("token longer than %d bytes", MaxTokenLen)
	}
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return Token{}, malformed("missing %q prefix", strings.TrimSpace(prefix))
	}
	var t Token
	var seen struct{ sr, sig, se, skn bool }
	for field := range strings.SplitSeq(rest, "&") {
		name, value, ok := strings.Cut(field, "=")
		if !ok {
			// Only the field name position is safe to report: the field
			// could be a piece of the signature.
			return Token{}, malformed("field without '='")
		}
		var dup *bool
		switch name {
		case "sr":
			dup = &seen.sr
			t.Resource = value
		case "sig":
			dup = &seen.sig
			sig, err := url.PathUnescape(value)
			if err != nil {
				return Token{}, malformed("sig is not valid URL encoding")
			}
			t.Signature = sig
		case "se":
			dup = &seen.se
			exp, err := parseExpiry(value)
			if err != nil {
				return Token{}, err
			}
			t.se = value
			t.Expiry = exp
		case "skn":
			dup = &seen.skn
			skn, err := url.PathUnescape(value)
			if err != nil {
				return Token{}, malformed("skn is not valid URL encoding")
			}
			t.KeyName = skn
		default:
			// Unknown fields are ignored as IoT Hub does; they are not
			// part of the signed text.
			continue
		}
		if *dup {
			return Token{}, malformed("duplicate field %q", name)
		}
		*dup = true
	}
	switch {
	case !seen.sr || t.Resource == "":
		return Token{}, malformed("missing sr")
	case !seen.sig || t.Signature == "":
		return Token{}, malformed("missing sig")
	case !seen.se:
		return Token{}, malformed("missing se")
	case seen.skn && t.KeyName == "":
		return Token{}, malformed("empty skn")
	}
	return t, nil
}

func parseExpiry(se string) (time.Time, error) {
	if se == "" || len(se) > 19 {
		return time.Time{}, malformed("se is not a unix time")
	}
	for i := 0; i < len(se); i++ {
		if se[i] < '0' || se[i] > '9' {
			return time.Time{}, malformed("se is not a non-negative integer")
		}
	}
	n, err := strconv.ParseInt(se, 10, 64)
	if err != nil {
		return time.Time{}, malformed("se is out of range")
	}
	return time.Unix(n, 0).UTC(), nil
}

// Scope is Resource URL-decoded until stable (tolerating double encoding).
func (t Token) Scope() string {
	s := t.Resource
	for range maxDecodeRounds {
		d, err := url.PathUnescape(s)
		if err != nil || d == s {
			break
		}
		s = d
	}
	return s
}

// Covers reports whether the token's scope covers target (e.g.
// "host/devices/d1"): a case-insensitive prefix match on whole path segments.
func (t Token) Covers(target string) bool {
	scope := strings.TrimRight(t.Scope(), "/")
	target = strings.TrimRight(target, "/")
	if scope == "" || target == "" || len(scope) > len(target) {
		return false
	}
	if !strings.EqualFold(scope, target[:len(scope)]) {
		return false
	}
	// Whole segments: "host/devices/d" must not cover "host/devices/d1".
	return len(scope) == len(target) || target[len(scope)] == '/'
}

// Verify checks the signature against base64 key and expiry against now.
// The signature is checked first, so ErrExpired means a genuine token that
// has run out (worth telling the client), never a forged one.
func (t Token) Verify(key string, now time.Time) error {
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(k) == 0 {
		return fmt.Errorf("sas: key is not base64: %w", ErrSignature)
	}
	got, err := decodeSig(t.Signature)
	if err != nil {
		return fmt.Errorf("sas: sig is not base64: %w", ErrSignature)
	}
	if !hmac.Equal(got, mac(k, t.Resource, t.expiryText())) {
		return fmt.Errorf("sas: %w", ErrSignature)
	}
	if !t.Expiry.After(now) {
		return fmt.Errorf("sas: token expired at %s: %w", t.Expiry.UTC().Format(time.RFC3339), ErrExpired)
	}
	return nil
}

// expiryText is se as sent, or Expiry formatted for tokens built in code.
func (t Token) expiryText() string {
	if t.se != "" {
		return t.se
	}
	return strconv.FormatInt(t.Expiry.Unix(), 10)
}

// decodeSig accepts padded and unpadded base64; some clients strip the '='.
func decodeSig(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	return b, err
}

func mac(key []byte, resource, se string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(resource))
	h.Write([]byte{'\n'})
	h.Write([]byte(se))
	return h.Sum(nil)
}

// Sign returns a token for resource (not yet encoded), signed with base64 key.
// keyName may be "". Fields come in the Node SDK's order (sr, sig, skn, se) and
// are encoded as it encodes them, so both produce the same text.
func Sign(resource, keyName, key string, expiry time.Time) (string, error) {
	if resource == "" {
		return "", errors.New("sas: sign: empty resource")
	}
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(k) == 0 {
		return "", errors.New("sas: sign: key is not base64")
	}
	unix := expiry.Unix()
	if unix < 0 {
		return "", errors.New("sas: sign: expiry before 1970")
	}
	sr := EncodeURIComponentStrict(resource)
	se := strconv.FormatInt(unix, 10)
	sig := base64.StdEncoding.EncodeToString(mac(k, sr, se))
	var b strings.Builder
	b.WriteString(prefix)
	b.WriteString("sr=")
	b.WriteString(sr)
	b.WriteString("&sig=")
	b.WriteString(EncodeURIComponentStrict(sig))
	if keyName != "" {
		b.WriteString("&skn=")
		b.WriteString(EncodeURIComponentStrict(keyName))
	}
	b.WriteString("&se=")
	b.WriteString(se)
	return b.String(), nil
}

// EncodeURIComponentStrict percent-encodes s like JavaScript's
// encodeURIComponent and additionally escapes !'()* (azure-iot-common's
// encodeUriComponentStrict): only A-Z a-z 0-9 - _ . ~ stay literal.
func EncodeURIComponentStrict(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !strictUnreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if strictUnreserved(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&0xF])
	}
	return string(b)
}

func strictUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}

// Has reports whether the policy grants r. Names compare case-insensitively
// because hand-written configuration is not always canonical.
func (p Policy) Has(r Right) bool {
	for _, have := range p.Rights {
		if strings.EqualFold(string(have), string(r)) {
			return true
		}
	}
	return false
}

// ParseRights parses IoT Hub's rights text, e.g. "RegistryRead, RegistryWrite,
// ServiceConnect, DeviceConnect": names separated by commas and/or spaces, in
// any case. The result holds each right once, canonically spelt, in the
// order RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect.
func ParseRights(s string) ([]Right, error) {
	var have [len(allRights)]bool
	some := false
	for _, f := range strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	}) {
		found := false
		for i, r := range allRights {
			if strings.EqualFold(f, string(r)) {
				have[i], found, some = true, true, true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("sas: unknown right %q (want RegistryRead, RegistryWrite, ServiceConnect or DeviceConnect)", f)
		}
	}
	if !some {
		return nil, errors.New("sas: no rights given")
	}
	out := make([]Right, 0, len(allRights))
	for i, ok := range have {
		if ok {
			out = append(out, allRights[i])
		}
	}
	return out, nil
}

// VerifyService authorizes a service token (skn naming one of policies, scope
// covering hostName, signed with the policy's primary or secondary key) and
// returns the matching policy; the caller checks the rights it needs with
// Policy.Has. Errors wrap ErrExpired (a genuine token that has run out) or
// ErrUnauthorized (everything else, without saying which check failed).
func VerifyService(token Token, hostName string, policies []Policy, now time.Time) (Policy, error) {
	unauthorized := fmt.Errorf("sas: %w", ErrUnauthorized)
	if token.KeyName == "" {
		return Policy{}, unauthorized
	}
	var p *Policy
	for i := range policies {
		// Key names are case-sensitive, as in IoT Hub.
		if policies[i].KeyName == token.KeyName {
			p = &policies[i]
			break
		}
	}
	if p == nil || !token.Covers(hostName) {
		return Policy{}, unauthorized
	}
	err := ErrSignature // a policy without keys authorizes nothing
	for _, key := range [...]string{p.PrimaryKey, p.SecondaryKey} {
		if key == "" {
			continue
		}
		if err = token.Verify(key, now); err == nil || errors.Is(err, ErrExpired) {
			break
		}
	}
	switch {
	case err == nil:
		return *p, nil
	case errors.Is(err, ErrExpired):
		return Policy{}, err
	default:
		return Policy{}, unauthorized
	}
}

// GenerateKey returns a new random 256-bit key, base64-encoded, as IoT Hub
// generates for devices and policies.
func GenerateKey() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("sas: generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b[:]), nil
}
