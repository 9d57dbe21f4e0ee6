package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

func hubCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "hub", Short: "Hub-wide commands: connection strings, CA, queries, statistics"}
	t.flags(c)
	var policy string
	showCS := &cobra.Command{
		Use: "show-connection-string", Short: "Print a shared access policy's service connection string", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, err := ownerConnectionString(t.dataDir, policy)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), cs)
			return err
		},
	}
	showCS.Flags().StringVar(&policy, "policy", "iothubowner", "policy name")
	showCA := &cobra.Command{
		Use: "show-ca", Short: "Print the hub's CA certificate (PEM)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(filepath.Join(t.dataDir, "pki", "ca.pem"))
			if err != nil {
				return fmt.Errorf("read CA certificate: %w", err)
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	var q string
	var top int
	query := &cobra.Command{
		Use: "query", Short: "Run an IoT Hub query over device and module twins", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			items, err := cl.QueryAll(cmd.Context(), q, 100, top)
			if err != nil {
				return err
			}
			if items == nil {
				items = []json.RawMessage{}
			}
			return printJSON(cmd.OutOrStdout(), items)
		},
	}
	query.Flags().StringVarP(&q, "query-command", "q", "", "the query, e.g. \"SELECT * FROM devices WHERE tags.site = 'a'\"")
	_ = query.MarkFlagRequired("query-command")
	query.Flags().IntVar(&top, "top", 1000, "maximum number of results")
	stats := &cobra.Command{
		Use: "statistics", Short: "Device counts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			d, err := cl.DeviceStatistics(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.ServiceStatistics(cmd.Context())
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), map[string]any{"devices": d, "service": s})
		},
	}
	c.AddCommand(showCS, showCA, query, stats)
	return c
}
