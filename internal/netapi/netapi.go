// Package netapi is the management API of the hub's network policy (public
// network access, IP rules, private endpoints, minimum TLS version) and the
// small client `moat network` uses. Changes go through a netpolicy.Engine, so
// they take effect at once, are saved before they are in force, and close the
// live connections the new policy refuses.
package netapi

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/netpolicy"
	"github.com/moat-iot/moat/internal/sas"
)

// Prefix is where the API lives on the hub's HTTPS listener.
const Prefix = "/moat/network"

// Error codes of this API beyond IoT Hub's.
var (
	IPRuleNotFound          = errcode.Code{Name: "IPFilterRuleNotFound", Number: 404701, Status: http.StatusNotFound}
	PrivateEndpointNotFound = errcode.Code{Name: "PrivateEndpointConnectionNotFound", Number: 404702, Status: http.StatusNotFound}
)

const maxBody = 1 << 20

// Handler serves the API. auth runs first on every request with the right the
// request needs (reads: RegistryRead or RegistryWrite; changes:
// RegistryWrite).
//
//	GET    /moat/network                                    the whole network policy
//	PUT    /moat/network                                    replace it
//	PUT    /moat/network/publicNetworkAccess                {"publicNetworkAccess":"Disabled"}
//	PUT    /moat/network/defaultAction                      {"defaultAction":"Deny"}
//	PUT    /moat/network/minTlsVersion                      {"minTlsVersion":"1.3"}
//	PUT    /moat/network/ipRules/{name}                     {"ipMask":"10.0.0.0/8"} (action Allow)
//	DELETE /moat/network/ipRules/{name}
//	PUT    /moat/network/privateEndpointConnections/{name}  a privateEndpointConnection
//	DELETE /moat/network/privateEndpointConnections/{name}
//
// Every answer that succeeds is the whole policy now in force.
func Handler(e *netpolicy.Engine, auth func(r *http.Request, write bool) error, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	h := func(pattern string, write bool, f func(r *http.Request, body []byte) error) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := auth(r, write); err != nil {
				var ce *errcode.Error
				if !errors.As(err, &ce) {
					ce = errcode.Wrap(errcode.IotHubUnauthorizedAccess, err, "Unauthorized")
				}
				log.Debug("network API request refused", "method", r.Method, "path", r.URL.Path, "reason", err)
				writeError(w, ce)
				return
			}
			var body []byte
			if r.Method == http.MethodPut {
				b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
				if err != nil {
					writeError(w, errcode.New(errcode.ArgumentInvalid, "request body: %v", err))
					return
				}
				body = b
			}
			if err := f(r, body); err != nil {
				ce := errcode.From(err)
				if ce.Code.Status >= 500 {
					log.Error("network API request failed", "method", r.Method, "path", r.URL.Path, "error", err)
				} else {
					log.Info("network API request rejected", "method", r.Method, "path", r.URL.Path, "error", ce.Message)
				}
				writeError(w, ce)
				return
			}
			writeJSON(w, http.StatusOK, e.Policy())
		})
	}
	modify := func(f func(p *netpolicy.Policy) error) error {
		return wrapValidation(e.Modify(f))
	}
	h("GET "+Prefix, false, func(*http.Request, []byte) error { return nil })
	h("PUT "+Prefix, true, func(r *http.Request, body []byte) error {
		p, err := netpolicy.DecodeJSON(body)
		if err != nil {
			return errcode.New(errcode.ArgumentInvalid, "%v", err)
		}
		return wrapValidation(e.Update(p))
	})
	h("PUT "+Prefix+"/publicNetworkAccess", true, func(r *http.Request, body []byte) error {
		var v struct {
			PublicNetworkAccess string `json:"publicNetworkAccess"`
		}
		if err := decodeField(body, &v, &v.PublicNetworkAccess); err != nil {
			return err
		}
		return modify(func(p *netpolicy.Policy) error { p.PublicNetworkAccess = v.PublicNetworkAccess; return nil })
	})
	h("PUT "+Prefix+"/minTlsVersion", true, func(r *http.Request, body []byte) error {
		var v struct {
			MinTLSVersion string `json:"minTlsVersion"`
		}
		if err := decodeField(body, &v, &v.MinTLSVersion); err != nil {
			return err
		}
		return modify(func(p *netpolicy.Policy) error { p.MinTLSVersion = v.MinTLSVersion; return nil })
	})
	h("PUT "+Prefix+"/defaultAction", true, func(r *http.Request, body []byte) error {
		var v struct {
			DefaultAction string `json:"defaultAction"`
		}
		if err := decodeField(body, &v, &v.DefaultAction); err != nil {
			return err
		}
		return modify(func(p *netpolicy.Policy) error {
			if len(p.IPFilterRules) > 0 {
				return errClassic()
			}
			if p.NetworkRuleSets == nil {
				p.NetworkRuleSets = &netpolicy.NetworkRuleSets{IPRules: []netpolicy.IPRule{}}
			}
			p.NetworkRuleSets.DefaultAction = v.DefaultAction
			return nil
		})
	})
	h("PUT "+Prefix+"/ipRules/{name}", true, func(r *http.Request, body []byte) error {
		var rule netpolicy.IPRule
		if err := decodeStrict(body, &rule); err != nil {
			return err
		}
		name := r.PathValue("name")
		if rule.FilterName == "" {
			rule.FilterName = name
		}
		if !strings.EqualFold(rule.FilterName, name) {
			return errcode.New(errcode.ArgumentInvalid, "the body's filterName %q is not the path's %q", rule.FilterName, name)
		}
		if rule.Action == "" {
			rule.Action = netpolicy.ActionAllow
		}
		return modify(func(p *netpolicy.Policy) error {
			if len(p.IPFilterRules) > 0 {
				return errClassic()
			}
			if p.NetworkRuleSets == nil {
				// Adding a rule does not by itself shut anyone out:
				// defaultAction Deny is a separate, explicit step.
				p.NetworkRuleSets = &netpolicy.NetworkRuleSets{DefaultAction: netpolicy.ActionAllow}
			}
			rules := p.NetworkRuleSets.IPRules
			for i, old := range rules {
				if strings.EqualFold(old.FilterName, rule.FilterName) {
					rules[i] = rule
					return nil
				}
			}
			p.NetworkRuleSets.IPRules = append(rules, rule)
			return nil
		})
	})
	h("DELETE "+Prefix+"/ipRules/{name}", true, func(r *http.Request, _ []byte) error {
		name := r.PathValue("name")
		return modify(func(p *netpolicy.Policy) error {
			if p.NetworkRuleSets != nil {
				for i, old := range p.NetworkRuleSets.IPRules {
					if strings.EqualFold(old.FilterName, name) {
						p.NetworkRuleSets.IPRules = append(p.NetworkRuleSets.IPRules[:i], p.NetworkRuleSets.IPRules[i+1:]...)
						return nil
					}
				}
			}
			return errcode.New(IPRuleNotFound, "no IP rule named %q", name)
		})
	})
	h("PUT "+Prefix+"/privateEndpointConnections/{name}", true, func(r *http.Request, body []byte) error {
		var c netpolicy.PrivateEndpointConnection
		if err := decodeStrict(body, &c); err != nil {
			return err
		}
		name := r.PathValue("name")
		if c.Name == "" {
			c.Name = name
		}
		if !strings.EqualFold(c.Name, name) {
			return errcode.New(errcode.ArgumentInvalid, "the body's name %q is not the path's %q", c.Name, name)
		}
		return modify(func(p *netpolicy.Policy) error {
			for i, old := range p.PrivateEndpointConnections {
				if strings.EqualFold(old.Name, c.Name) {
					p.PrivateEndpointConnections[i] = c
					return nil
				}
			}
			p.PrivateEndpointConnections = append(p.PrivateEndpointConnections, c)
			return nil
		})
	})
	h("DELETE "+Prefix+"/privateEndpointConnections/{name}", true, func(r *http.Request, _ []byte) error {
		name := r.PathValue("name")
		return modify(func(p *netpolicy.Policy) error {
			for i, old := range p.PrivateEndpointConnections {
				if strings.EqualFold(old.Name, name) {
					p.PrivateEndpointConnections = append(p.PrivateEndpointConnections[:i], p.PrivateEndpointConnections[i+1:]...)
					return nil
				}
			}
			return errcode.New(PrivateEndpointNotFound, "no private endpoint connection named %q", name)
		})
	})
	return mux
}

func errClassic() error {
	return errcode.New(errcode.InvalidOperation, "the classic ipFilterRules are in use; replace the whole policy (PUT %s) to change or leave them", Prefix)
}

// wrapValidation turns policy validation errors into ArgumentInvalid with
// every field path in the message.
func wrapValidation(err error) error {
	if err == nil {
		return nil
	}
	var ce *errcode.Error
	if errors.As(err, &ce) {
		return err
	}
	var fe *netpolicy.FieldError
	if errors.As(err, &fe) {
		return errcode.New(errcode.ArgumentInvalid, "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return err // a save failure: a server error
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errcode.New(errcode.ArgumentInvalid, "request body: %v", err)
	}
	return nil
}

// decodeField accepts either {"field": "value"} or the bare JSON string.
func decodeField(b []byte, obj any, field *string) error {
	if err := json.Unmarshal(b, field); err == nil {
		return nil
	}
	return decodeStrict(b, obj)
}

type legacyError struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// writeError answers in IoT Hub's legacy form, as the rest of the hub's API.
func writeError(w http.ResponseWriter, e *errcode.Error) {
	w.Header().Set("iothub-errorcode", e.Code.Name)
	writeJSON(w, e.Code.Status, legacyError{
		Message:          "ErrorCode:" + e.Code.Name + ";" + e.Message,
		ExceptionMessage: "TimeStamp:" + time.Now().UTC().Format("01/02/2006 15:04:05"),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"Message":"ErrorCode:ServerError;internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// ServiceAuth checks a service SAS token (Authorization header) of one of the
// hub's shared access policies: reads need RegistryRead or RegistryWrite,
// changes RegistryWrite. Errors never carry the token.
func ServiceAuth(hostName string, policies func() []sas.Policy, now func() time.Time) func(r *http.Request, write bool) error {
	if now == nil {
		now = time.Now
	}
	return func(r *http.Request, write bool) error {
		h := r.Header.Get("Authorization")
		if h == "" {
			return errcode.New(errcode.IotHubUnauthorizedAccess, "Unauthorized")
		}
		tok, err := sas.Parse(h)
		if err != nil {
			return errcode.Wrap(errcode.IotHubUnauthorizedAccess, err, "Unauthorized")
		}
		p, err := sas.VerifyService(tok, hostName, policies(), now())
		if err != nil {
			return errcode.Wrap(errcode.IotHubUnauthorizedAccess, err, "Unauthorized")
		}
		if p.Has(sas.RegistryWrite) || (!write && p.Has(sas.RegistryRead)) {
			return nil
		}
		return errcode.New(errcode.IotHubUnauthorizedAccess, "Unauthorized: the policy lacks RegistryWrite")
	}
}
