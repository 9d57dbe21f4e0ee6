package registry

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
)

// MaxIDLength is the longest device or module id IoT Hub accepts.
const MaxIDLength = 128

// edgeScopePrefix starts every IoT Edge device scope.
const edgeScopePrefix = "ms-azure-iot-edge://"

// ValidateID checks a device or module id against IoT Hub's rules: 1–128
// characters of A-Z a-z 0-9 and -.%_*?!(),:=@$'.
func ValidateID(kind, id string) error {
	if id == "" {
		return errcode.New(errcode.ArgumentInvalid, "%s id is empty", kind)
	}
	if len(id) > MaxIDLength {
		return errcode.New(errcode.ArgumentInvalid, "%s id is longer than %d characters", kind, MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return errcode.New(errcode.ArgumentInvalid, "%s id %q has a character IoT Hub does not allow at position %d", kind, id, i)
		}
	}
	return nil
}

func idChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("-.%_*?!(),:=@$'", c) >= 0
}

// ParseDevice decodes and checks a device body (PUT /devices/{id}) without
// touching the registry: JSON shape, id, status, authentication type, keys and
// thumbprints. Create and update apply the same checks.
func ParseDevice(body []byte) (Device, error) {
	var d Device
	if err := decodeStrict(body, &d); err != nil {
		return Device{}, err
	}
	if err := checkDevice(d); err != nil {
		return Device{}, err
	}
	return d, nil
}

// ParseModule is ParseDevice for a module body.
func ParseModule(body []byte) (Module, error) {
	var m Module
	if err := decodeStrict(body, &m); err != nil {
		return Module{}, err
	}
	if err := ValidateID("device", m.DeviceID); err != nil {
		return Module{}, err
	}
	if err := ValidateID("module", m.ModuleID); err != nil {
		return Module{}, err
	}
	if err := checkAuthShape(m.Authentication); err != nil {
		return Module{}, err
	}
	return m, nil
}

func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return errcode.Wrap(errcode.IotHubFormatError, err, "body is not a valid identity")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errcode.New(errcode.IotHubFormatError, "body has data after the JSON value")
	}
	return nil
}

func checkDevice(d Device) error {
	if err := ValidateID("device", d.DeviceID); err != nil {
		return err
	}
	if _, err := normStatus(d.Status, StatusEnabled); err != nil {
		return err
	}
	if err := checkAuthShape(d.Authentication); err != nil {
		return err
	}
	if len(d.ParentScopes) > 1 {
		return errcode.New(errcode.ArgumentInvalid, "a device may have only one parent scope")
	}
	return nil
}

// checkAuthShape checks what in gives — its type, keys and thumbprints —
// without requiring what an update may keep from the current identity.
func checkAuthShape(in Authentication) error {
	if _, err := authType(in); err != nil {
		return err
	}
	for _, k := range []string{in.SymmetricKey.PrimaryKey, in.SymmetricKey.SecondaryKey} {
		if k != "" {
			if err := checkKey(k); err != nil {
				return err
			}
		}
	}
	for _, t := range []string{in.X509Thumbprint.PrimaryThumbprint, in.X509Thumbprint.SecondaryThumbprint} {
		if err := checkThumbprint(t); err != nil {
			return err
		}
	}
	return nil
}

// normStatus returns the canonical status for s; "" means def.
func normStatus(s, def string) (string, error) {
	switch {
	case s == "":
		return def, nil
	case strings.EqualFold(s, StatusEnabled):
		return StatusEnabled, nil
	case strings.EqualFold(s, StatusDisabled):
		return StatusDisabled, nil
	}
	return "", errcode.New(errcode.ArgumentInvalid, "status must be enabled or disabled")
}

// normalizeAuth applies IoT Hub's authentication rules to in. cur is the
// current authentication on update (nil on create): empty keys or thumbprints
// keep the current ones of the same type, and on create empty SAS keys are
// generated. A thumbprint without a type means selfSigned.
func normalizeAuth(in Authentication, cur *Authentication) (Authentication, error) {
	typ, err := authType(in)
	if err != nil {
		return Authentication{}, err
	}
	if typ == "" {
		if cur != nil {
			typ = cur.Type
		} else {
			typ = AuthSAS
		}
	}
	same := cur != nil && cur.Type == typ
	out := Authentication{Type: typ}
	switch typ {
	case AuthSAS:
		out.SymmetricKey = in.SymmetricKey
		for _, k := range []struct {
			v   *string
			old string
		}{{&out.SymmetricKey.PrimaryKey, curKey(cur, same, true)}, {&out.SymmetricKey.SecondaryKey, curKey(cur, same, false)}} {
			switch {
			case *k.v != "":
				if err := checkKey(*k.v); err != nil {
					return Authentication{}, err
				}
			case k.old != "":
				*k.v = k.old
			default:
				*k.v = newSASKey()
			}
		}
	case AuthSelfSigned:
		out.X509Thumbprint = in.X509Thumbprint
		if same {
			if out.X509Thumbprint.PrimaryThumbprint == "" && out.X509Thumbprint.SecondaryThumbprint == "" {
				out.X509Thumbprint = cur.X509Thumbprint
			}
		}
		if out.X509Thumbprint.PrimaryThumbprint == "" {
			return Authentication{}, errcode.New(errcode.ArgumentInvalid, "selfSigned authentication needs a primary thumbprint")
		}
		for _, t := range []string{out.X509Thumbprint.PrimaryThumbprint, out.X509Thumbprint.SecondaryThumbprint} {
			if err := checkThumbprint(t); err != nil {
				return Authentication{}, err
			}
		}
	case AuthCertificateAuthority, AuthNone:
		// No credentials are kept: the CA chain (or nothing) proves the identity.
	}
	return out, nil
}

func curKey(cur *Authentication, same, primary bool) string {
	if !same {
		return ""
	}
	if primary {
		return cur.SymmetricKey.PrimaryKey
	}
	return cur.SymmetricKey.SecondaryKey
}

// authType is in's canonical type; "" when neither a type nor a thumbprint is
// given.
func authType(in Authentication) (string, error) {
	if in.Type == "" {
		if in.X509Thumbprint.PrimaryThumbprint != "" || in.X509Thumbprint.SecondaryThumbprint != "" {
			return AuthSelfSigned, nil
		}
		return "", nil
	}
	for _, t := range []string{AuthSAS, AuthSelfSigned, AuthCertificateAuthority, AuthNone} {
		if strings.EqualFold(in.Type, t) {
			return t, nil
		}
	}
	return "", errcode.New(errcode.ArgumentInvalid, "authentication type must be sas, selfSigned, certificateAuthority or none")
}

// checkKey requires base64 of 16 to 64 bytes. The key itself never goes into
// the message.
func checkKey(k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) < 16 || len(b) > 64 {
		return errcode.New(errcode.ArgumentInvalid, "symmetric keys must be base64 of 16 to 64 bytes")
	}
	return nil
}

// checkThumbprint requires "" or the hex of a SHA-1 (40) or SHA-256 (64)
// digest.
func checkThumbprint(t string) error {
	if t == "" {
		return nil
	}
	if _, err := hex.DecodeString(t); err != nil || (len(t) != 40 && len(t) != 64) {
		return errcode.New(errcode.ArgumentInvalid, "thumbprints must be 40 or 64 hex digits")
	}
	return nil
}

// matchETag applies an If-Match value to the current etag. The Node SDK
// quotes every value, "*" included; other clients send a bare *; an absent
// header matches anything.
func matchETag(ifMatch, cur string) bool {
	v := strings.TrimSpace(ifMatch)
	v = strings.TrimPrefix(v, "W/")
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return v == "" || v == "*" || v == cur
}

func preconditionFailed() error {
	return errcode.New(errcode.PreconditionFailed, "the etag in If-Match does not match the current etag")
}

// parseEdgeScope returns the device id inside an edge scope
// "ms-azure-iot-edge://{id}-{n}".
func parseEdgeScope(scope string) (string, bool) {
	rest, ok := strings.CutPrefix(scope, edgeScopePrefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 || i == len(rest)-1 {
		return "", false
	}
	if _, err := strconv.ParseUint(rest[i+1:], 10, 64); err != nil {
		return "", false
	}
	return rest[:i], true
}

// newEdgeScope makes an edge device's scope; n is the creation time in .NET
// ticks as IoT Hub uses, so a re-created device gets a new scope.
func newEdgeScope(id string, now time.Time) string {
	const unixEpochTicks = 621355968000000000
	ticks := now.UnixNano()/100 + unixEpochTicks
	return fmt.Sprintf("%s%s-%d", edgeScopePrefix, id, ticks)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return b
}

// newSASKey is a 32-byte random key, base64 as IoT Hub generates them.
func newSASKey() string { return base64.StdEncoding.EncodeToString(randBytes(32)) }

// newETag is an opaque identity etag in IoT Hub's style: base64 of a decimal
// number ("MTIzNDU2"). It is random so a re-created identity never repeats an
// etag a client may still hold.
func newETag() string {
	n := binary.BigEndian.Uint32(randBytes(4))
	return base64.StdEncoding.EncodeToString([]byte(strconv.FormatUint(uint64(n), 10)))
}

// newGenerationID is a random 18-digit decimal, the shape IoT Hub uses.
func newGenerationID() string {
	n := binary.BigEndian.Uint64(randBytes(8)) % 900000000000000000
	return strconv.FormatUint(n+100000000000000000, 10)
}
