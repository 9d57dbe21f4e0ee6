package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

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
			base, hc, sign, err := t.management()
			if err != nil {
				return err
			}
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, base+hub.EndpointHealthPath, nil)
			if err != nil {
				return err
			}
			if err := sign(req); err != nil {
				return err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return fmt.Errorf("endpoint health: %w", err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if err != nil {
				return fmt.Errorf("endpoint health: %w", err)
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("endpoint health: %s", resp.Status)
			}
			var out []endpoint.Health
			if err := json.Unmarshal(body, &out); err != nil {
				return fmt.Errorf("endpoint health: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	c.AddCommand(health)
	return c
}
