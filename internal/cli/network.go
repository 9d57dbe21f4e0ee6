package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/netapi"
	"github.com/moat-iot/moat/internal/netpolicy"
)

// networkCmd changes a running hub's network policy, in the manner of
// `az iot hub update --set properties.publicNetworkAccess=…`,
// `az iot hub network-rule …` and `az network private-endpoint-connection …`.
// Every change is in force (and closes connections it no longer admits)
// before the command returns; each prints the whole policy.
func networkCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "network", Short: "Show and change the hub's network isolation: public access, IP rules, private endpoints, TLS minimum"}
	t.flags(c)
	run := func(f func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error)) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			cl, err := t.networkClient()
			if err != nil {
				return err
			}
			p, err := f(cmd.Context(), cl)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), p)
		}
	}

	show := &cobra.Command{Use: "show", Short: "Print the network policy in force", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) { return cl.Policy(ctx) })}

	var enabled string
	public := &cobra.Command{Use: "public-access", Short: "Enable or disable access through public addresses (private endpoints are unaffected)", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
			on, err := strconv.ParseBool(enabled)
			if err != nil {
				return netpolicy.Policy{}, fmt.Errorf("--enabled must be true or false, not %q", enabled)
			}
			v := netpolicy.Disabled
			if on {
				v = netpolicy.Enabled
			}
			return cl.SetPublicNetworkAccess(ctx, v)
		})}
	public.Flags().StringVar(&enabled, "enabled", "", "true or false")
	_ = public.MarkFlagRequired("enabled")

	defaultAction := &cobra.Command{Use: "default-action Allow|Deny", Short: "What happens to public addresses no IP rule allows", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
				return cl.SetDefaultAction(ctx, canonicalWord(args[0], netpolicy.ActionAllow, netpolicy.ActionDeny))
			})(cmd, nil)
		}}

	tlsCmd := &cobra.Command{Use: "min-tls-version 1.2|1.3", Short: "The lowest TLS version new connections may use", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
				return cl.SetMinTLSVersion(ctx, args[0])
			})(cmd, nil)
		}}

	c.AddCommand(show, public, defaultAction, tlsCmd, ipRuleCmd(run, t.networkClient), privateEndpointCmd(run, t.networkClient))
	return c
}

type runner = func(f func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error)) func(*cobra.Command, []string) error

func ipRuleCmd(run runner, client func() (*netapi.Client, error)) *cobra.Command {
	c := &cobra.Command{Use: "ip-rule", Short: "Add, remove and list IP allow rules (networkRuleSets.ipRules)"}
	var name, mask string
	add := &cobra.Command{Use: "add", Short: "Add or replace an allow rule (takes effect for public traffic when default-action is Deny)", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
			return cl.PutIPRule(ctx, name, mask)
		})}
	add.Flags().StringVar(&name, "name", "", "rule name (filterName)")
	add.Flags().StringVar(&mask, "ip-mask", "", "IPv4 or IPv6 address or CIDR prefix")
	_ = add.MarkFlagRequired("name")
	_ = add.MarkFlagRequired("ip-mask")
	remove := &cobra.Command{Use: "remove", Short: "Remove an allow rule", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
			return cl.DeleteIPRule(ctx, name)
		})}
	remove.Flags().StringVar(&name, "name", "", "rule name (filterName)")
	_ = remove.MarkFlagRequired("name")
	list := &cobra.Command{Use: "list", Short: "List the allow rules", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := client()
			if err != nil {
				return err
			}
			p, err := cl.Policy(cmd.Context())
			if err != nil {
				return err
			}
			var rules []netpolicy.IPRule
			if p.NetworkRuleSets != nil {
				rules = p.NetworkRuleSets.IPRules
			}
			if rules == nil {
				rules = []netpolicy.IPRule{}
			}
			return printJSON(cmd.OutOrStdout(), rules)
		}}
	c.AddCommand(add, remove, list)
	return c
}

func privateEndpointCmd(run runner, client func() (*netapi.Client, error)) *cobra.Command {
	c := &cobra.Command{Use: "private-endpoint", Short: "Add, approve, reject, remove and list private endpoint connections"}
	var name, description string
	var addrs []string
	nameFlag := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&name, "name", "", "private endpoint connection name")
		_ = cmd.MarkFlagRequired("name")
	}
	add := &cobra.Command{Use: "add", Short: "Add a private endpoint on addresses of the hub's host (Pending until approved)", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
			pe := netpolicy.PrivateEndpointConnection{Name: name}
			pe.Properties.PrivateEndpoint.IPAddresses = addrs
			pe.Properties.PrivateLinkServiceConnectionState = netpolicy.ConnectionState{Status: netpolicy.StatusPending, Description: description, ActionsRequired: "None"}
			return cl.PutPrivateEndpoint(ctx, pe)
		})}
	nameFlag(add)
	add.Flags().StringArrayVar(&addrs, "address", nil, "an address of the hub's host the endpoint listens on; repeat for more")
	add.Flags().StringVar(&description, "description", "", "state description")
	_ = add.MarkFlagRequired("address")

	setState := func(use, short, status string) *cobra.Command {
		cmd := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
			RunE: run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
				p, err := cl.Policy(ctx)
				if err != nil {
					return p, err
				}
				for _, pe := range p.PrivateEndpointConnections {
					if strings.EqualFold(pe.Name, name) {
						pe.Properties.PrivateLinkServiceConnectionState.Status = status
						if description != "" {
							pe.Properties.PrivateLinkServiceConnectionState.Description = description
						}
						return cl.PutPrivateEndpoint(ctx, pe)
					}
				}
				return p, errcode.New(netapi.PrivateEndpointNotFound, "no private endpoint connection named %q", name)
			})}
		nameFlag(cmd)
		cmd.Flags().StringVar(&description, "description", "", "state description")
		return cmd
	}
	approve := setState("approve", "Approve a private endpoint connection: its traffic is admitted", netpolicy.StatusApproved)
	reject := setState("reject", "Reject a private endpoint connection: its traffic is refused, live connections closed", netpolicy.StatusRejected)
	remove := &cobra.Command{Use: "remove", Short: "Remove a private endpoint connection (its addresses become public addresses)", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, cl *netapi.Client) (netpolicy.Policy, error) {
			return cl.DeletePrivateEndpoint(ctx, name)
		})}
	nameFlag(remove)
	list := &cobra.Command{Use: "list", Short: "List private endpoint connections", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := client()
			if err != nil {
				return err
			}
			p, err := cl.Policy(cmd.Context())
			if err != nil {
				return err
			}
			pes := p.PrivateEndpointConnections
			if pes == nil {
				pes = []netpolicy.PrivateEndpointConnection{}
			}
			return printJSON(cmd.OutOrStdout(), pes)
		}}
	c.AddCommand(add, approve, reject, remove, list)
	return c
}

// canonicalWord accepts any case of one of words and returns its spelling
// (anything else passes through for the hub to refuse with a field path).
func canonicalWord(s string, words ...string) string {
	for _, w := range words {
		if strings.EqualFold(s, w) {
			return w
		}
	}
	return s
}

// networkClient reaches the network API with the same credentials, CA and
// address as the service API client, signing a service SAS per request.
func (t *target) networkClient() (*netapi.Client, error) {
	base, hc, sign, err := t.management()
	if err != nil {
		return nil, err
	}
	return netapi.NewClient(base, hc, sign), nil
}
