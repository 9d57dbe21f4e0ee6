package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/message"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
	"github.com/moat-iot/moat/internal/sas"
)

func deviceCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "device", Short: "Manage device identities, twins, methods and cloud-to-device messages"}
	t.flags(c)
	var deviceID, moduleID string
	idFlag := func(cmd *cobra.Command, module bool) {
		cmd.Flags().StringVarP(&deviceID, "device-id", "d", "", "device id")
		_ = cmd.MarkFlagRequired("device-id")
		if module {
			cmd.Flags().StringVarP(&moduleID, "module-id", "m", "", "module id")
		}
	}

	var authMethod, pthumb, sthumb, status, statusReason string
	var edge bool
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a device identity",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			d := registry.Device{DeviceID: deviceID, Status: status, StatusReason: statusReason, Capabilities: registry.Capabilities{IotEdge: edge}}
			switch authMethod {
			case "shared_private_key":
				d.Authentication.Type = registry.AuthSAS
			case "x509_thumbprint":
				d.Authentication.Type = registry.AuthSelfSigned
				d.Authentication.X509Thumbprint = registry.X509Thumbprint{PrimaryThumbprint: pthumb, SecondaryThumbprint: sthumb}
			case "x509_ca":
				d.Authentication.Type = registry.AuthCertificateAuthority
			default:
				return fmt.Errorf("--auth-method must be shared_private_key, x509_thumbprint or x509_ca")
			}
			out, err := cl.CreateDevice(cmd.Context(), d)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	idFlag(create, false)
	create.Flags().StringVar(&authMethod, "auth-method", "shared_private_key", "shared_private_key, x509_thumbprint or x509_ca")
	create.Flags().StringVar(&pthumb, "primary-thumbprint", "", "X.509 primary thumbprint (SHA-1 or SHA-256 hex)")
	create.Flags().StringVar(&sthumb, "secondary-thumbprint", "", "X.509 secondary thumbprint")
	create.Flags().StringVar(&status, "status", "enabled", "enabled or disabled")
	create.Flags().StringVar(&statusReason, "status-reason", "", "why the device has its status")
	create.Flags().BoolVar(&edge, "edge-enabled", false, "an IoT Edge device")

	show := &cobra.Command{
		Use: "show", Short: "Show a device identity", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			out, err := cl.GetDevice(cmd.Context(), deviceID)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	idFlag(show, false)

	var top int
	list := &cobra.Command{
		Use: "list", Short: "List device identities", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			out, err := cl.ListDevices(cmd.Context(), top)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	list.Flags().IntVar(&top, "top", 1000, "maximum number of devices")

	update := &cobra.Command{
		Use: "update", Short: "Update a device's status", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			d, err := cl.GetDevice(cmd.Context(), deviceID)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("status") {
				d.Status = status
			}
			if cmd.Flags().Changed("status-reason") {
				d.StatusReason = statusReason
			}
			out, err := cl.UpdateDevice(cmd.Context(), d, d.ETag)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	idFlag(update, false)
	update.Flags().StringVar(&status, "status", "", "enabled or disabled")
	update.Flags().StringVar(&statusReason, "status-reason", "", "why the device has its status")

	del := &cobra.Command{
		Use: "delete", Short: "Delete a device identity", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			return cl.DeleteDevice(cmd.Context(), deviceID, "")
		},
	}
	idFlag(del, false)

	var keyType string
	showCS := &cobra.Command{
		Use: "show-connection-string", Short: "Print a device's (or module's) connection string", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			auth := registry.Authentication{}
			if moduleID == "" {
				d, err := cl.GetDevice(cmd.Context(), deviceID)
				if err != nil {
					return err
				}
				auth = d.Authentication
			} else {
				m, err := cl.GetModule(cmd.Context(), deviceID, moduleID)
				if err != nil {
					return err
				}
				auth = m.Authentication
			}
			cs := "HostName=" + cl.HostName() + ";DeviceId=" + deviceID
			if moduleID != "" {
				cs += ";ModuleId=" + moduleID
			}
			switch {
			case auth.Type != registry.AuthSAS:
				cs += ";x509=true"
			case keyType == "secondary":
				cs += ";SharedAccessKey=" + auth.SymmetricKey.SecondaryKey
			default:
				cs += ";SharedAccessKey=" + auth.SymmetricKey.PrimaryKey
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), cs)
			return err
		},
	}
	idFlag(showCS, true)
	showCS.Flags().StringVar(&keyType, "key-type", "primary", "primary or secondary")

	var methodName, methodPayload string
	var timeout, connectTimeout int
	invoke := &cobra.Command{
		Use: "invoke-method", Short: "Invoke a direct method on a device or module", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			if !json.Valid([]byte(methodPayload)) {
				return fmt.Errorf("--method-payload is not valid JSON")
			}
			req := methods.Request{MethodName: methodName, Payload: json.RawMessage(methodPayload), ResponseTimeoutInSeconds: &timeout}
			if cmd.Flags().Changed("connect-timeout") {
				req.ConnectTimeoutInSeconds = &connectTimeout
			}
			out, err := cl.InvokeMethod(cmd.Context(), deviceID, moduleID, req)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	idFlag(invoke, true)
	invoke.Flags().StringVar(&methodName, "method-name", "", "method name")
	_ = invoke.MarkFlagRequired("method-name")
	invoke.Flags().StringVar(&methodPayload, "method-payload", "null", "JSON payload")
	invoke.Flags().IntVar(&timeout, "timeout", 30, "response timeout in seconds (5-300)")
	invoke.Flags().IntVar(&connectTimeout, "connect-timeout", 0, "seconds to wait for the device to connect (0-300)")

	var data, props, msgID, corrID, ctype, cenc, expiry, ack string
	sendC2D := &cobra.Command{
		Use: "send-c2d", Short: "Send a cloud-to-device message", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			m := message.Message{Body: []byte(data), System: map[string]string{}, Properties: map[string]string{}}
			app, err := parseProps(props)
			if err != nil {
				return err
			}
			m.Properties = app
			for k, v := range map[string]string{message.SysMessageID: msgID, message.SysCorrelationID: corrID, message.SysContentType: ctype, message.SysContentEncoding: cenc, message.SysAck: ack} {
				if v != "" {
					m.System[k] = v
				}
			}
			if expiry != "" {
				t, err := time.Parse(time.RFC3339, expiry)
				if err != nil {
					return fmt.Errorf("--expiry: %w", err)
				}
				m.System[message.SysExpiry] = t.UTC().Format(time.RFC3339Nano)
			}
			return cl.SendC2D(cmd.Context(), deviceID, m)
		},
	}
	idFlag(sendC2D, false)
	sendC2D.Flags().StringVar(&data, "data", "Ping from Moat", "message body")
	sendC2D.Flags().StringVar(&props, "props", "", "application properties as \"key0=value0;key1=value1\"")
	sendC2D.Flags().StringVar(&msgID, "message-id", "", "message id (default: a new UUID)")
	sendC2D.Flags().StringVar(&corrID, "correlation-id", "", "correlation id")
	sendC2D.Flags().StringVar(&ctype, "content-type", "", "content type")
	sendC2D.Flags().StringVar(&cenc, "content-encoding", "", "content encoding")
	sendC2D.Flags().StringVar(&expiry, "expiry", "", "absolute expiry time (RFC 3339)")
	sendC2D.Flags().StringVar(&ack, "ack", "", "feedback requested: none, positive, negative or full")

	purge := &cobra.Command{
		Use: "purge-c2d", Short: "Delete a device's pending cloud-to-device messages", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			out, err := cl.PurgeC2D(cmd.Context(), deviceID)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	idFlag(purge, false)

	var duration int
	genSAS := &cobra.Command{
		Use: "generate-sas-token", Short: "Print a SAS token for a device or module (e.g. as an MQTT password)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			var key string
			resource := cl.HostName() + "/devices/" + deviceID
			if moduleID == "" {
				d, err := cl.GetDevice(cmd.Context(), deviceID)
				if err != nil {
					return err
				}
				key = d.Authentication.SymmetricKey.PrimaryKey
			} else {
				m, err := cl.GetModule(cmd.Context(), deviceID, moduleID)
				if err != nil {
					return err
				}
				key = m.Authentication.SymmetricKey.PrimaryKey
				resource += "/modules/" + moduleID
			}
			if key == "" {
				return fmt.Errorf("the identity has no symmetric key")
			}
			tok, err := sas.Sign(resource, "", key, time.Now().Add(time.Duration(duration)*time.Second))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	idFlag(genSAS, true)
	genSAS.Flags().IntVar(&duration, "duration", 3600, "validity in seconds")

	c.AddCommand(create, show, list, update, del, showCS, genSAS, invoke, sendC2D, purge, twinCmd(t))
	return c
}

// parseProps parses az's "key0=value0;key1=value1" property syntax.
func parseProps(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--props: %q is not key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

func twinCmd(t *target) *cobra.Command {
	c := &cobra.Command{Use: "twin", Short: "Show or update a device or module twin"}
	var deviceID, moduleID, desired, tags, etag string
	ids := func(cmd *cobra.Command) {
		cmd.Flags().StringVarP(&deviceID, "device-id", "d", "", "device id")
		cmd.Flags().StringVarP(&moduleID, "module-id", "m", "", "module id")
		_ = cmd.MarkFlagRequired("device-id")
	}
	show := &cobra.Command{
		Use: "show", Short: "Show a twin", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			out, err := cl.GetTwin(cmd.Context(), deviceID, moduleID)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	ids(show)
	update := &cobra.Command{
		Use: "update", Short: "Patch a twin's desired properties and tags", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			patch := map[string]any{}
			if desired != "" {
				var d any
				if err := json.Unmarshal([]byte(desired), &d); err != nil {
					return fmt.Errorf("--desired: %w", err)
				}
				patch["properties"] = map[string]any{"desired": d}
			}
			if tags != "" {
				var tg any
				if err := json.Unmarshal([]byte(tags), &tg); err != nil {
					return fmt.Errorf("--tags: %w", err)
				}
				patch["tags"] = tg
			}
			if len(patch) == 0 {
				return fmt.Errorf("give --desired and/or --tags")
			}
			body, _ := json.Marshal(patch)
			out, err := cl.PatchTwin(cmd.Context(), deviceID, moduleID, body, etag)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	ids(update)
	update.Flags().StringVar(&desired, "desired", "", "desired properties patch (JSON object)")
	update.Flags().StringVar(&tags, "tags", "", "tags patch (JSON object)")
	update.Flags().StringVar(&etag, "etag", "", "apply only if the twin still has this etag")
	c.AddCommand(show, update)
	return c
}
