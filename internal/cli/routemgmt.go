package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/hub"
	"github.com/moat-iot/moat/internal/routing"
)

// Conditional headers: create must not replace, update must not create.
var (
	createOnly = http.Header{"If-None-Match": {"*"}}
	updateOnly = http.Header{"If-Match": {"*"}}
)

// routeChangeCmds are route create, update and delete, and the fallback
// route's commands, as az iot hub route has them.
func routeChangeCmds(t *target) []*cobra.Command {
	var rt routing.Route
	var endpointName, enabled string
	flags := func(c *cobra.Command, creating bool) {
		c.Flags().StringVarP(&rt.Name, "name", "n", "", "route name (required)")
		c.Flags().StringVarP(&rt.Source, "source", "s", "", "DeviceMessages, TwinChangeEvents, DeviceLifecycleEvents, DeviceConnectionStateEvents or MqttTopics")
		c.Flags().StringVar(&endpointName, "endpoint-name", "", "the endpoint the route sends to")
		c.Flags().StringVarP(&rt.Condition, "condition", "c", "", "routing query condition (default true)")
		c.Flags().StringVar(&rt.TopicFilter, "topic-filter", "", "MQTT topic filter of a MqttTopics route")
		// create's default is true; one variable serves both commands, so
		// the default is applied in create's RunE.
		c.Flags().StringVar(&enabled, "enabled", "", "true or false (create: default true)")
		_ = c.MarkFlagRequired("name")
		if creating {
			_ = c.MarkFlagRequired("source")
			_ = c.MarkFlagRequired("endpoint-name")
		}
	}
	parseEnabled := func() (bool, error) {
		switch strings.ToLower(enabled) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return false, fmt.Errorf("--enabled: want true or false, not %q", enabled)
	}
	create := &cobra.Command{
		Use: "create", Short: "Create a route", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("enabled") {
				enabled = "true"
			}
			on, err := parseEnabled()
			if err != nil {
				return err
			}
			rt.IsEnabled, rt.EndpointNames = on, []string{endpointName}
			var out routing.Route
			if err := t.callWith(cmd.Context(), http.MethodPut, routePath(rt.Name), createOnly, rt, &out); err != nil {
				return fmt.Errorf("route create: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	flags(create, true)
	update := &cobra.Command{
		Use: "update", Short: "Change a route; flags not given keep their values", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cur routing.Route
			if err := t.call(cmd.Context(), http.MethodGet, routePath(rt.Name), nil, &cur); err != nil {
				return fmt.Errorf("route update: %w", err)
			}
			f := cmd.Flags()
			if f.Changed("source") {
				cur.Source = rt.Source
			}
			if f.Changed("endpoint-name") {
				cur.EndpointNames = []string{endpointName}
			}
			if f.Changed("condition") {
				cur.Condition = rt.Condition
			}
			if f.Changed("topic-filter") {
				cur.TopicFilter = rt.TopicFilter
			}
			if f.Changed("enabled") {
				on, err := parseEnabled()
				if err != nil {
					return err
				}
				cur.IsEnabled = on
			}
			var out routing.Route
			if err := t.callWith(cmd.Context(), http.MethodPut, routePath(rt.Name), updateOnly, cur, &out); err != nil {
				return fmt.Errorf("route update: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	flags(update, false)
	del := &cobra.Command{
		Use: "delete", Short: "Delete a route", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := t.call(cmd.Context(), http.MethodDelete, routePath(rt.Name), nil, nil); err != nil {
				return fmt.Errorf("route delete: %w", err)
			}
			return nil
		},
	}
	del.Flags().StringVarP(&rt.Name, "name", "n", "", "route name (required)")
	_ = del.MarkFlagRequired("name")
	return []*cobra.Command{create, update, del, fallbackCmd(t)}
}

func routePath(name string) string { return hub.RoutingPath + "/routes/" + url.PathEscape(name) }

// fallbackCmd manages the fallback route: where device messages that match
// no route go (IoT Hub's fallbackRoute, always to the built-in events).
func fallbackCmd(t *target) *cobra.Command {
	c := &cobra.Command{Use: "fallback", Short: "The fallback route (device messages no route matches go to events)"}
	show := &cobra.Command{
		Use: "show", Short: "Show the fallback route", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v hub.RoutingView
			if err := t.call(cmd.Context(), http.MethodGet, hub.RoutingPath, nil, &v); err != nil {
				return fmt.Errorf("route fallback show: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), v.FallbackRoute)
		},
	}
	var rt routing.Route
	var enabled bool
	set := &cobra.Command{
		Use: "set", Short: "Set the fallback route", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt.IsEnabled = enabled
			rt.Source = routing.SourceDeviceMessages
			rt.EndpointNames = []string{routing.BuiltInEvents}
			var out routing.Route
			if err := t.call(cmd.Context(), http.MethodPut, hub.RoutingPath+"/fallbackRoute", rt, &out); err != nil {
				return fmt.Errorf("route fallback set: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	set.Flags().StringVarP(&rt.Name, "name", "n", "fallback", "the fallback route's name")
	set.Flags().StringVarP(&rt.Condition, "condition", "c", "true", "routing query condition")
	set.Flags().BoolVar(&enabled, "enabled", true, "whether unmatched device messages go to events")
	del := &cobra.Command{
		Use: "delete", Short: "Remove the fallback route (unmatched device messages are dropped once routes exist)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := t.call(cmd.Context(), http.MethodDelete, hub.RoutingPath+"/fallbackRoute", nil, nil); err != nil {
				return fmt.Errorf("route fallback delete: %w", err)
			}
			return nil
		},
	}
	c.AddCommand(show, set, del)
	return c
}

// endpointChangeCmds are endpoint create, update, show and delete.
func endpointChangeCmds(t *target) []*cobra.Command {
	var name, typ, props string
	var force bool
	nameFlag := func(c *cobra.Command) {
		c.Flags().StringVar(&name, "endpoint-name", "", "the endpoint (required)")
		_ = c.MarkFlagRequired("endpoint-name")
	}
	put := func(use, short string, header http.Header) *cobra.Command {
		c := &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			Long: short + `.

--properties takes the endpoint's settings as JSON (or @file with them), in the
shape of the config file's properties.routing.endpoints lists, for example
  --endpoint-type webhook --properties '{"url":"https://10.0.0.5/ingest"}'
  --endpoint-type storageContainer --properties @blob.json
Types: webhook, mqttBridge, nats, eventHub, kafka, storageContainer.`,
			RunE: func(cmd *cobra.Command, _ []string) error {
				raw, err := readJSONArg(props)
				if err != nil {
					return fmt.Errorf("--properties: %w", err)
				}
				var out hub.EndpointView
				if err := t.callWith(cmd.Context(), http.MethodPut, endpointPath(name), header, hub.EndpointSpec{Type: typ, Properties: raw}, &out); err != nil {
					return fmt.Errorf("endpoint %s: %w", use, err)
				}
				return printJSON(cmd.OutOrStdout(), out)
			},
		}
		nameFlag(c)
		c.Flags().StringVarP(&typ, "endpoint-type", "t", "", "webhook, mqttBridge, nats, eventHub, kafka or storageContainer (required)")
		c.Flags().StringVar(&props, "properties", "", "the endpoint's settings: JSON or @file (required)")
		_ = c.MarkFlagRequired("endpoint-type")
		_ = c.MarkFlagRequired("properties")
		return c
	}
	create := put("create", "Create a custom endpoint; it receives what routes send it from now on", createOnly)
	update := put("update", "Replace a custom endpoint's settings; it keeps its undelivered messages and dead letters", updateOnly)
	show := &cobra.Command{
		Use: "show", Short: "Show an endpoint's name and type", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out hub.EndpointView
			if err := t.call(cmd.Context(), http.MethodGet, endpointPath(name), nil, &out); err != nil {
				return fmt.Errorf("endpoint show: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	nameFlag(show)
	del := &cobra.Command{
		Use: "delete", Short: "Delete a custom endpoint that no route or enrichment uses", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := endpointPath(name)
			if force {
				path += "?force=true"
			}
			if err := t.call(cmd.Context(), http.MethodDelete, path, nil, nil); err != nil {
				return fmt.Errorf("endpoint delete: %w", err)
			}
			return nil
		},
	}
	nameFlag(del)
	del.Flags().BoolVar(&force, "force", false, "delete even if the endpoint has dead letters (they are lost)")
	return []*cobra.Command{create, update, show, del}
}

func endpointPath(name string) string {
	return hub.RoutingPath + "/endpoints/" + url.PathEscape(name)
}

// readJSONArg takes JSON inline or, as @path, from a file.
func readJSONArg(s string) (json.RawMessage, error) {
	b := []byte(s)
	if path, ok := strings.CutPrefix(s, "@"); ok {
		var err error
		if b, err = os.ReadFile(path); err != nil {
			return nil, err
		}
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("not JSON")
	}
	return json.RawMessage(b), nil
}

// enrichmentCmd is az iot hub message-enrichment.
func enrichmentCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "message-enrichment", Aliases: []string{"enrichment"}, Short: "Message enrichments (like az iot hub message-enrichment)"}
	t.flags(c)
	var key, value string
	var endpoints []string
	list := &cobra.Command{
		Use: "list", Short: "List the message enrichments", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v hub.RoutingView
			if err := t.call(cmd.Context(), http.MethodGet, hub.RoutingPath, nil, &v); err != nil {
				return fmt.Errorf("message-enrichment list: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), v.Enrichments)
		},
	}
	put := func(use, short string, header http.Header) *cobra.Command {
		c := &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			Long: short + `.

The value is a static string, $iothubname, or a $twin path such as
$twin.tags.site or $twin.properties.desired.line.`,
			RunE: func(cmd *cobra.Command, _ []string) error {
				var out routing.Enrichment
				spec := hub.EnrichmentSpec{Value: value, EndpointNames: endpoints}
				if err := t.callWith(cmd.Context(), http.MethodPut, enrichmentPath(key), header, spec, &out); err != nil {
					return fmt.Errorf("message-enrichment %s: %w", use, err)
				}
				return printJSON(cmd.OutOrStdout(), out)
			},
		}
		c.Flags().StringVarP(&key, "key", "k", "", "the application property it sets (required)")
		c.Flags().StringVarP(&value, "value", "v", "", "static value, $iothubname or a $twin path (required)")
		c.Flags().StringSliceVarP(&endpoints, "endpoints", "e", nil, "endpoints whose messages get it (required; comma separated or repeated)")
		for _, f := range []string{"key", "value", "endpoints"} {
			_ = c.MarkFlagRequired(f)
		}
		return c
	}
	del := &cobra.Command{
		Use: "delete", Short: "Delete a message enrichment", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := t.call(cmd.Context(), http.MethodDelete, enrichmentPath(key), nil, nil); err != nil {
				return fmt.Errorf("message-enrichment delete: %w", err)
			}
			return nil
		},
	}
	del.Flags().StringVarP(&key, "key", "k", "", "the enrichment's key (required)")
	_ = del.MarkFlagRequired("key")
	c.AddCommand(list,
		put("create", "Add a message enrichment", createOnly),
		put("update", "Change a message enrichment's value or endpoints", updateOnly),
		del)
	return c
}

func enrichmentPath(key string) string {
	return hub.RoutingPath + "/enrichments/" + url.PathEscape(key)
}
