package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/serviceapi"
)

func monitorCmd() *cobra.Command {
	t := &target{}
	var deviceID, props string
	var timeout int
	c := &cobra.Command{
		Use:   "monitor-events",
		Short: "Print live device-to-cloud messages (one JSON object per line)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, time.Duration(timeout)*time.Second)
				defer cancel()
			}
			out := cmd.OutOrStdout()
			started := false
			err = cl.MonitorEventsReady(ctx, deviceID, func() {
				if !started {
					started = true
					fmt.Fprintln(os.Stderr, "Starting event monitor, use ctrl-c to stop...")
				}
			}, func(r serviceapi.EventRecord) error {
				if r.Dropped > 0 {
					fmt.Fprintf(os.Stderr, "moat: monitor fell behind; %d messages not shown\n", r.Dropped)
				}
				if r.DeviceID == "" {
					return nil
				}
				var payload any = json.RawMessage(r.Body)
				if len(r.Body) == 0 {
					payload = string(r.BodyBytes())
				}
				ev := map[string]any{"origin": r.DeviceID, "module": r.ModuleID, "payload": payload}
				p := map[string]any{}
				if props == "sys" || props == "all" {
					p["system"] = r.SystemProperties
				}
				if props == "app" || props == "all" {
					p["application"] = r.Properties
				}
				if len(p) > 0 {
					ev["properties"] = p
				}
				b, err := json.Marshal(map[string]any{"event": ev})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(out, string(b))
				return err
			})
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return err
		},
	}
	t.flags(c)
	c.Flags().StringVarP(&deviceID, "device-id", "d", "", "only this device")
	c.Flags().StringVar(&props, "properties", "all", "properties to show: sys, app, all or none")
	c.Flags().IntVar(&timeout, "timeout", 0, "stop after this many seconds (0: until interrupted)")
	return c
}
