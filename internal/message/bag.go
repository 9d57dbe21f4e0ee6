package message

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"
)

// Limits of DecodeBag. An MQTT topic cannot exceed 65535 bytes anyway, so
// MaxBagLen only matters for bags from other sources; MaxProperties bounds the
// maps a device can make the hub allocate per message. Both are far above
// what the SDKs send (a handful of properties, well under 1 KiB).
const (
	MaxBagLen     = 64 * 1024
	MaxProperties = 256
	// MaxSize is IoT Hub's device-to-cloud message limit (body plus
	// property names and values), checked with Message.Size.
	MaxSize = 256 * 1024
)

// shortNames maps the property-bag keys of system properties to their full
// names, in the order EncodeBag writes them: the C2D order of §1.5 first,
// then the rest.
var shortNames = [...]struct{ short, full string }{
	{"$.mid", SysMessageID},
	{"$.to", SysTo},
	{"$.exp", SysExpiry},
	{"$.cid", SysCorrelationID},
	{"$.uid", SysUserID},
	{"$.ct", SysContentType},
	{"$.ce", SysContentEncoding},
	{"$.ifid", SysInterfaceID},
	{"$.on", SysOutputName},
	{"$.ctime", SysCreationTime},
	{"$.sub", SysSubject},
	{"$.schema", SysDataSchema},
}

func fullName(short string) (string, bool) {
	for _, n := range shortNames {
		if n.short == short {
			return n.full, true
		}
	}
	return "", false
}

// DecodeBag parses the property bag, the last topic segment of
// devices/{d}/messages/events/{bag} (the caller strips a trailing "/").
//
//   - Pairs are separated by '&'; empty pairs ("a=1&&b=2", a trailing '&') are
//     skipped; "k" without '=' is k with an empty value.
//   - Keys and values are percent-decoded, and '+' decodes to a space: the C
//     SDK and querystring-style encoders write spaces that way, while the Node
//     SDK's encodeURIComponent writes '+' itself as %2B, so both read right.
//     Decoded text must be valid UTF-8 (as decodeURIComponent requires).
//   - Known system keys ($.mid, $.cid, $.uid, $.to, $.ct, $.ce, $.exp, $.ifid,
//     $.on, $.ctime, $.sub, $.schema) go to system under their full names.
//     Other "$."-keys are dropped, as IoT Hub drops them, so a device can not
//     plant look-alike system properties among its application properties.
//   - Everything else is an application property, with the key as sent.
//
// Errors (malformed percent-encoding, invalid UTF-8, an empty or repeated
// key, more than MaxProperties pairs, a bag over MaxBagLen) name the pair's
// position, counting from 1.
func DecodeBag(bag string) (system, app map[string]string, err error) {
	system, app = map[string]string{}, map[string]string{}
	if len(bag) > MaxBagLen {
		return nil, nil, fmt.Errorf("message: property bag is %d bytes, limit %d", len(bag), MaxBagLen)
	}
	pos, count := 0, 0
	for pair := range strings.SplitSeq(bag, "&") {
		pos++
		if pair == "" {
			continue
		}
		count++
		if count > MaxProperties {
			return nil, nil, fmt.Errorf("message: more than %d properties in the property bag", MaxProperties)
		}
		rawKey, rawValue, _ := strings.Cut(pair, "=")
		key, err := decodeComponent(rawKey)
		if err != nil {
			return nil, nil, fmt.Errorf("message: property %d: name: %w", pos, err)
		}
		value, err := decodeComponent(rawValue)
		if err != nil {
			return nil, nil, fmt.Errorf("message: property %d (%q): value: %w", pos, key, err)
		}
		if key == "" {
			return nil, nil, fmt.Errorf("message: property %d: empty name", pos)
		}
		dst := app
		if strings.HasPrefix(key, "$.") {
			full, ok := fullName(key)
			if !ok {
				continue
			}
			key, dst = full, system
		}
		if _, dup := dst[key]; dup {
			return nil, nil, fmt.Errorf("message: property %d: %q given twice", pos, key)
		}
		dst[key] = value
	}
	return system, app, nil
}

func decodeComponent(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		if !utf8.ValidString(s) {
			return "", fmt.Errorf("not valid UTF-8")
		}
		return s, nil
	}
	d, err := url.QueryUnescape(s)
	if err != nil {
		// url's error quotes the offending escape only, never the whole value.
		return "", err
	}
	if !utf8.ValidString(d) {
		return "", fmt.Errorf("decodes to invalid UTF-8")
	}
	return d, nil
}

// EncodeBag builds the property bag of a hub-to-device topic (C2D, module
// inputs): system properties with a short key first in a fixed order ($.mid,
// $.to, $.exp, $.cid, $.uid, $.ct, $.ce, $.ifid, $.on, $.ctime, $.sub,
// $.schema), then other system properties under their full names sorted (so
// "iothub-ack=full" reaches the device as IoT Hub sends it), then application
// properties sorted by key. Keys and values are encoded like JavaScript's
// encodeURIComponent, so '/' is %2F (the SDKs split the topic on '/'), '$'
// is %24 and a space %20.
//
// DecodeBag(EncodeBag(s, a)) gives back s and a when every key of s has a
// short form and no key of a starts with "$." or repeats a system key sent by
// full name.
func EncodeBag(system, app map[string]string) string {
	var b strings.Builder
	add := func(k, v string) {
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		writeComponent(&b, k)
		b.WriteByte('=')
		writeComponent(&b, v)
	}
	for _, n := range shortNames {
		if v, ok := system[n.full]; ok {
			add(n.short, v)
		}
	}
	var rest []string
	for k := range system {
		if _, ok := shortOf(k); !ok {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	for _, k := range rest {
		add(k, system[k])
	}
	keys := make([]string, 0, len(app))
	for k := range app {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		add(k, app[k])
	}
	return b.String()
}

func shortOf(full string) (string, bool) {
	for _, n := range shortNames {
		if n.full == full {
			return n.short, true
		}
	}
	return "", false
}

// writeComponent writes s as encodeURIComponent would: A-Z a-z 0-9 and
// -_.!~*'() stay literal, every other byte is %XX.
func writeComponent(b *strings.Builder, s string) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if uriUnreserved(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xF])
	}
}

func uriUnreserved(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '_', '.', '!', '~', '*', '\'', '(', ')':
		return true
	}
	return false
}

// Size is the message's size as IoT Hub counts it against MaxSize: the body
// plus the names and values of system and application properties.
func (m *Message) Size() int {
	n := len(m.Body)
	for k, v := range m.System {
		n += len(k) + len(v)
	}
	for k, v := range m.Properties {
		n += len(k) + len(v)
	}
	return n
}
