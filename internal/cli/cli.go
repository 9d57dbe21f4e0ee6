// Package cli is the moat command tree: `moat serve` runs a hub, and the other
// commands talk to a running hub over its service API in the manner of
// `az iot hub`.
package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/errcode"
)

// Main runs the command line and returns the process exit code.
func Main(args []string) int {
	root := &cobra.Command{
		Use:           "moat",
		Short:         "Moat — a private-network IoT hub compatible with Azure IoT Hub",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), hubCmd(), deviceCmd(), moduleCmd(), monitorCmd(), dnsCmd(), endpointCmd(), routeCmd(), enrichmentCmd(), networkCmd())
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		var e *errcode.Error
		if errors.As(err, &e) {
			fmt.Fprintf(os.Stderr, "moat: %s: %s\n", e.Code.Name, e.Message)
		} else {
			fmt.Fprintf(os.Stderr, "moat: %v\n", err)
		}
		return 1
	}
	return 0
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "", "info":
		l = slog.LevelInfo
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("unknown log level %q", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
