package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/routing"
)

func routeCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "route", Short: "Message routes (like az iot hub route)"}
	t.flags(c)
	list := &cobra.Command{
		Use: "list", Short: "List the routes and the fallback route", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v hub.RoutingView
			if err := t.call(cmd.Context(), http.MethodGet, hub.RoutingPath, nil, &v); err != nil {
				return fmt.Errorf("route list: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), v.Routes)
		},
	}
	var name string
	show := &cobra.Command{
		Use: "show", Short: "Show one route", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v hub.RoutingView
			if err := t.call(cmd.Context(), http.MethodGet, hub.RoutingPath, nil, &v); err != nil {
				return fmt.Errorf("route show: %w", err)
			}
			for _, r := range v.Routes {
				if r.Name == name {
					return printJSON(cmd.OutOrStdout(), r)
				}
			}
			if v.FallbackRoute != nil && v.FallbackRoute.Name == name {
				return printJSON(cmd.OutOrStdout(), v.FallbackRoute)
			}
			return fmt.Errorf("route show: no route named %q", name)
		},
	}
	show.Flags().StringVarP(&name, "name", "n", "", "route name (required)")
	_ = show.MarkFlagRequired("name")

	var source, body, appProps, sysProps, twin string
	test := &cobra.Command{
		Use:   "test",
		Short: "Test a sample message against one route (--name) or all routes of a source",
		Long: `Test a sample message against the running hub's routes, as az iot hub route test does.
With --name, the answer is that route's result: "true", "false" or "undefined"
(with compilation errors). Without it, the routes of --source (default
DeviceMessages) that the message matches.

Properties are given as k1=v1;k2=v2 or as a JSON object; system properties by
their query names (contentType, contentEncoding, ...).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app, err := parsePropertyList(appProps)
			if err != nil {
				return fmt.Errorf("--app-properties: %w", err)
			}
			sys, err := parsePropertyList(sysProps)
			if err != nil {
				return fmt.Errorf("--system-properties: %w", err)
			}
			msg := hub.TestMessage{Body: body, AppProperties: app, SystemProperties: sys}
			var tw json.RawMessage
			if twin != "" {
				if !json.Valid([]byte(twin)) {
					return fmt.Errorf("--twin: not JSON")
				}
				tw = json.RawMessage(twin)
			}
			if name != "" {
				var out hub.TestRouteResult
				if err := t.call(cmd.Context(), http.MethodPost, hub.RoutingPath+"/routes/$test", hub.TestRouteInput{RouteName: name, Message: msg, Twin: tw}, &out); err != nil {
					return fmt.Errorf("route test: %w", err)
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			var out hub.TestAllRoutesResult
			if err := t.call(cmd.Context(), http.MethodPost, hub.RoutingPath+"/routes/$testall", hub.TestAllRoutesInput{RoutingSource: source, Message: msg, Twin: tw}, &out); err != nil {
				return fmt.Errorf("route test: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	test.Flags().StringVarP(&name, "name", "n", "", "route to test (default: all routes of --source)")
	test.Flags().StringVarP(&source, "source", "s", routing.SourceDeviceMessages, "routing source for testing all routes")
	test.Flags().StringVar(&body, "body", "", "message body")
	test.Flags().StringVar(&appProps, "app-properties", "", "application properties: k1=v1;k2=v2 or JSON")
	test.Flags().StringVar(&sysProps, "system-properties", "", "system properties: k1=v1;k2=v2 or JSON")
	test.Flags().StringVar(&twin, "twin", "", "the sender's twin (JSON), for $twin conditions")
	c.AddCommand(list, show, test)
	c.AddCommand(routeChangeCmds(t)...)
	return c
}

// parsePropertyList reads properties as az iot hub takes them: k1=v1;k2=v2
// (a value may contain '='), or a JSON object of strings.
func parsePropertyList(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	if strings.HasPrefix(s, "{") {
		d := json.NewDecoder(bytes.NewReader([]byte(s)))
		d.UseNumber()
		var raw map[string]any
		if err := d.Decode(&raw); err != nil {
			return nil, fmt.Errorf("not a JSON object: %w", err)
		}
		for k, v := range raw {
			switch x := v.(type) {
			case string:
				out[k] = x
			case json.Number:
				out[k] = x.String()
			case bool:
				out[k] = fmt.Sprint(x)
			default:
				return nil, fmt.Errorf("property %q: want a string, number or boolean", k)
			}
		}
		return out, nil
	}
	for _, pair := range strings.Split(s, ";") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", pair)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("property %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}
