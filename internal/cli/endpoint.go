package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/endpoint"
	"github.com/moat-iot/moat/internal/hub"
)

func endpointCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "endpoint", Short: "Routing endpoints (like az iot hub routing-endpoint)"}
	t.flags(c)
	health := &cobra.Command{
		Use: "health", Short: "Show every endpoint's health (healthy, unhealthy, degraded, dead, unknown)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out []endpoint.Health
			if err := t.call(cmd.Context(), http.MethodGet, hub.EndpointHealthPath, nil, &out); err != nil {
				return fmt.Errorf("endpoint health: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	list := &cobra.Command{
		Use: "list", Short: "List the endpoints (name and type; settings stay on the hub, since they hold credentials)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v hub.RoutingView
			if err := t.call(cmd.Context(), http.MethodGet, hub.RoutingPath, nil, &v); err != nil {
				return fmt.Errorf("endpoint list: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), v.Endpoints)
		},
	}
	c.AddCommand(list, health, deadLettersCmd(t))
	c.AddCommand(endpointChangeCmds(t)...)
	return c
}

func deadLettersCmd(t *target) *cobra.Command {
	c := &cobra.Command{Use: "dead-letters", Short: "Messages an endpoint could not take within the retry period"}
	var name string
	var top int
	list := &cobra.Command{
		Use: "list", Short: "List an endpoint's dead letters, oldest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := hub.DeadLettersPrefix + url.PathEscape(name) + "/deadLetters"
			if top > 0 {
				path += "?top=" + strconv.Itoa(top)
			}
			var out []hub.DeadLetterView
			if err := t.call(cmd.Context(), http.MethodGet, path, nil, &out); err != nil {
				return fmt.Errorf("dead letters of %s: %w", name, err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	list.Flags().IntVar(&top, "top", 0, "at most this many (default all)")
	replay := &cobra.Command{
		Use: "replay", Short: "Deliver an endpoint's dead letters again (to that endpoint only) and remove them", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out hub.ReplayResult
			if err := t.call(cmd.Context(), http.MethodPost, hub.DeadLettersPrefix+url.PathEscape(name)+"/deadLetters/$replay", nil, &out); err != nil {
				return fmt.Errorf("replay dead letters of %s: %w", name, err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	for _, sub := range []*cobra.Command{list, replay} {
		sub.Flags().StringVar(&name, "endpoint-name", "", "the endpoint (required)")
		sub.Flags().StringVar(&name, "en", "", "short for --endpoint-name")
		_ = sub.Flags().MarkHidden("en")
		sub.PreRunE = func(*cobra.Command, []string) error {
			if name == "" {
				return fmt.Errorf("--endpoint-name is required")
			}
			return nil
		}
	}
	c.AddCommand(list, replay)
	return c
}

// call sends a management request, with in as its JSON body when not nil,
// and decodes the JSON answer into out.
func (t *target) call(ctx context.Context, method, path string, in, out any) error {
	return t.callWith(ctx, method, path, nil, in, out)
}

// callWith is call with extra request headers (conditional requests).
func (t *target) callWith(ctx context.Context, method, path string, header http.Header, in, out any) error {
	base, hc, sign, err := t.management()
	if err != nil {
		return err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if err := sign(req); err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Message string }
		if json.Unmarshal(answer, &e) == nil && e.Message != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Message)
		}
		return fmt.Errorf("%s", resp.Status)
	}
	if out == nil || len(bytes.TrimSpace(answer)) == 0 {
		return nil
	}
	return json.Unmarshal(answer, out)
}
