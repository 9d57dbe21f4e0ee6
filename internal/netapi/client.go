package netapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/netpolicy"
)

// Client calls a hub's network API.
type Client struct {
	base      string
	hc        *http.Client
	authorize func(*http.Request) error
}

// NewClient returns a client for the hub at baseURL ("https://hub:443");
// authorize adds credentials to each request (the CLI signs a service SAS).
func NewClient(baseURL string, hc *http.Client, authorize func(*http.Request) error) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), hc: hc, authorize: authorize}
}

// Policy reads the policy in force.
func (c *Client) Policy(ctx context.Context) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodGet, Prefix, nil)
}

// SetPolicy replaces the whole policy.
func (c *Client) SetPolicy(ctx context.Context, p netpolicy.Policy) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodPut, Prefix, p)
}

// SetPublicNetworkAccess sets "Enabled" or "Disabled".
func (c *Client) SetPublicNetworkAccess(ctx context.Context, v string) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodPut, Prefix+"/publicNetworkAccess", map[string]string{"publicNetworkAccess": v})
}

// SetDefaultAction sets networkRuleSets.defaultAction ("Allow" or "Deny").
func (c *Client) SetDefaultAction(ctx context.Context, v string) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodPut, Prefix+"/defaultAction", map[string]string{"defaultAction": v})
}

// SetMinTLSVersion sets "1.2" or "1.3".
func (c *Client) SetMinTLSVersion(ctx context.Context, v string) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodPut, Prefix+"/minTlsVersion", map[string]string{"minTlsVersion": v})
}

// PutIPRule adds or replaces an allow rule.
func (c *Client) PutIPRule(ctx context.Context, name, ipMask string) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodPut, Prefix+"/ipRules/"+url.PathEscape(name), netpolicy.IPRule{FilterName: name, Action: netpolicy.ActionAllow, IPMask: ipMask})
}

// DeleteIPRule removes an allow rule.
func (c *Client) DeleteIPRule(ctx context.Context, name string) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodDelete, Prefix+"/ipRules/"+url.PathEscape(name), nil)
}

// PutPrivateEndpoint adds or replaces a private endpoint connection.
func (c *Client) PutPrivateEndpoint(ctx context.Context, pe netpolicy.PrivateEndpointConnection) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodPut, Prefix+"/privateEndpointConnections/"+url.PathEscape(pe.Name), pe)
}

// DeletePrivateEndpoint removes a private endpoint connection.
func (c *Client) DeletePrivateEndpoint(ctx context.Context, name string) (netpolicy.Policy, error) {
	return c.do(ctx, http.MethodDelete, Prefix+"/privateEndpointConnections/"+url.PathEscape(name), nil)
}

func (c *Client) do(ctx context.Context, method, path string, body any) (netpolicy.Policy, error) {
	var out netpolicy.Policy
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return out, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return out, fmt.Errorf("network API: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if c.authorize != nil {
		if err := c.authorize(req); err != nil {
			return out, err
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return out, fmt.Errorf("network API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return out, fmt.Errorf("network API %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return out, parseError(resp.StatusCode, resp.Header.Get("iothub-errorcode"), b)
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, fmt.Errorf("network API %s %s: decode answer: %w", method, path, err)
	}
	return out, nil
}

var knownCodes = map[string]errcode.Code{}

func init() {
	for _, c := range []errcode.Code{errcode.ArgumentInvalid, errcode.InvalidOperation, errcode.IotHubUnauthorizedAccess, errcode.ServerError, IPRuleNotFound, PrivateEndpointNotFound} {
		knownCodes[c.Name] = c
	}
}

// parseError turns an answer in IoT Hub's legacy error form into an
// *errcode.Error.
func parseError(status int, header string, body []byte) *errcode.Error {
	name, msg := header, http.StatusText(status)
	var le legacyError
	if json.Unmarshal(body, &le) == nil && strings.HasPrefix(le.Message, "ErrorCode:") {
		rest := strings.TrimPrefix(le.Message, "ErrorCode:")
		if n, m, ok := strings.Cut(rest, ";"); ok {
			name, msg = n, m
		}
	}
	code, ok := knownCodes[name]
	if !ok {
		if name == "" {
			name = "HTTP" + fmt.Sprint(status)
		}
		code = errcode.Code{Name: name, Status: status}
	}
	return &errcode.Error{Code: code, Message: msg}
}
