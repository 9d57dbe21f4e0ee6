package serviceapi

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ConnectionString is a parsed service connection string.
type ConnectionString struct {
	HostName            string
	SharedAccessKeyName string
	SharedAccessKey     string
}

// maxConnStringLen bounds the input; real ones are a few hundred bytes.
const maxConnStringLen = 4096

// ParseConnectionString parses
// "HostName=…;SharedAccessKeyName=…;SharedAccessKey=…". Keys match
// case-insensitively and may come in any order; values run to the next ';'
// (base64 keys contain '='). A device connection string (DeviceId=…) is
// refused, since it cannot call the service API. Errors never quote the key.
func ParseConnectionString(s string) (ConnectionString, error) {
	var cs ConnectionString
	if len(s) > maxConnStringLen {
		return cs, fmt.Errorf("connection string longer than %d bytes", maxConnStringLen)
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(strings.TrimSpace(s), ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			// Do not echo the part: it may be a piece of the key.
			return ConnectionString{}, errors.New("connection string: a field has no '='")
		}
		k = strings.TrimSpace(k)
		lk := strings.ToLower(k)
		if seen[lk] {
			return ConnectionString{}, fmt.Errorf("connection string: %s is given twice", safeName(k))
		}
		seen[lk] = true
		v = strings.TrimSpace(v)
		switch lk {
		case "hostname":
			cs.HostName = v
		case "sharedaccesskeyname":
			cs.SharedAccessKeyName = v
		case "sharedaccesskey":
			cs.SharedAccessKey = v
		case "deviceid", "moduleid", "x509", "sharedaccesssignature":
			return ConnectionString{}, fmt.Errorf("connection string: %s belongs to a device connection string; the service API needs a shared access policy's", safeName(k))
		}
		// Other fields (GatewayHostName, …) do not concern the service API.
	}
	switch {
	case cs.HostName == "":
		return ConnectionString{}, errors.New("connection string: HostName is missing")
	case strings.ContainsAny(cs.HostName, "/ \t@?#"):
		return ConnectionString{}, errors.New("connection string: HostName must be a bare host name")
	case cs.SharedAccessKeyName == "":
		return ConnectionString{}, errors.New("connection string: SharedAccessKeyName is missing")
	case cs.SharedAccessKey == "":
		return ConnectionString{}, errors.New("connection string: SharedAccessKey is missing")
	}
	if k, err := base64.StdEncoding.DecodeString(cs.SharedAccessKey); err != nil || len(k) == 0 {
		return ConnectionString{}, errors.New("connection string: SharedAccessKey is not base64")
	}
	return cs, nil
}

// safeName quotes a field name for an error, bounded and printable.
func safeName(k string) string { return fmt.Sprintf("%q", truncate(k, 40)) }
