package cli

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/dnszone"
	"github.com/moat-iot/moat/internal/errcode"
)

// dnsCmd manages the hub's private DNS zones, in the manner of
// `az network private-dns zone|record-set`.
func dnsCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "dns", Short: "Manage the hub's private DNS zones and records"}
	t.flags(c)
	c.AddCommand(dnsZoneCmd(t), dnsRecordCmd(t))
	return c
}

func dnsZoneCmd(t *target) *cobra.Command {
	c := &cobra.Command{Use: "zone", Short: "Create, list, show, link and delete DNS zones"}
	var zone, policy string
	var links []string
	var public bool
	zoneFlag := func(cmd *cobra.Command) {
		cmd.Flags().StringVarP(&zone, "zone", "z", "", "zone name, e.g. privatelink.example.com")
		_ = cmd.MarkFlagRequired("zone")
	}
	linkFlag := func(cmd *cobra.Command) {
		cmd.Flags().StringArrayVar(&links, "link", nil, "client network (CIDR) that sees the zone; repeat for more")
	}

	create := &cobra.Command{
		Use: "create", Short: "Create a zone (private unless --public)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := parseLinks(links)
			if err != nil {
				return err
			}
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			out, err := cl.PutZone(cmd.Context(), dnszone.Zone{Name: zone, Links: ps, Public: public, ResolutionPolicy: policy, Records: []dnszone.Record{}}, true)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	zoneFlag(create)
	linkFlag(create)
	create.Flags().BoolVar(&public, "public", false, "answer every client not covered by a linked private zone")
	create.Flags().StringVar(&policy, "resolution-policy", "", "Default or NxDomainRedirect (linked clients fall back to the public answer for missing names)")

	list := &cobra.Command{
		Use: "list", Short: "List zones", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			out, err := cl.Zones(cmd.Context())
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}

	show := &cobra.Command{
		Use: "show", Short: "Show a zone with its records", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			out, err := cl.Zone(cmd.Context(), zone)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	zoneFlag(show)

	del := &cobra.Command{
		Use: "delete", Short: "Delete a zone", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			return cl.DeleteZone(cmd.Context(), zone)
		},
	}
	zoneFlag(del)

	setLinks := &cobra.Command{
		Use: "set-links", Short: "Replace the client networks linked to a zone (no --link unlinks all)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := parseLinks(links)
			if err != nil {
				return err
			}
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			out, err := cl.SetLinks(cmd.Context(), zone, ps)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	zoneFlag(setLinks)
	linkFlag(setLinks)

	c.AddCommand(create, list, show, del, setLinks)
	return c
}

func dnsRecordCmd(t *target) *cobra.Command {
	c := &cobra.Command{Use: "record", Short: "Add, remove and list record sets (A, AAAA, CNAME, TXT)"}
	var zone, name, typ string
	var values []string
	var ttl int64
	flags := func(cmd *cobra.Command, named bool) {
		cmd.Flags().StringVarP(&zone, "zone", "z", "", "zone name")
		_ = cmd.MarkFlagRequired("zone")
		cmd.Flags().StringVarP(&typ, "type", "t", "", "record type: A, AAAA, CNAME or TXT")
		if named {
			cmd.Flags().StringVarP(&name, "name", "n", "", `record name relative to the zone ("@" is the apex)`)
			_ = cmd.MarkFlagRequired("name")
			_ = cmd.MarkFlagRequired("type")
		}
	}

	add := &cobra.Command{
		Use: "add", Short: "Add values to a record set, creating it if needed", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(values) == 0 {
				return errors.New("give at least one --value")
			}
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			rec, err := cl.Record(cmd.Context(), zone, typ, name)
			switch {
			case errcode.Is(err, dnszone.RecordNotFound):
				rec = dnszone.Record{Name: name, Type: strings.ToUpper(typ)}
			case err != nil:
				return err
			}
			if strings.EqualFold(typ, dnszone.TypeCNAME) {
				rec.Values = nil // a CNAME has one target: adding replaces it
			}
			for _, v := range values {
				if !slices.Contains(rec.Values, v) {
					rec.Values = append(rec.Values, v)
				}
			}
			if cmd.Flags().Changed("ttl") {
				rec.TTL = ttl
			}
			out, err := cl.PutRecord(cmd.Context(), zone, rec)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	flags(add, true)
	add.Flags().StringArrayVar(&values, "value", nil, "a value (IP address, CNAME target or TXT text); repeat for more")
	add.Flags().Int64Var(&ttl, "ttl", dnszone.DefaultTTL, "TTL in seconds")

	remove := &cobra.Command{
		Use: "remove", Short: "Remove values from a record set, or the whole set without --value", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			if len(values) == 0 {
				return cl.DeleteRecord(cmd.Context(), zone, typ, name)
			}
			rec, err := cl.Record(cmd.Context(), zone, typ, name)
			if err != nil {
				return err
			}
			kept := slices.DeleteFunc(slices.Clone(rec.Values), func(v string) bool { return slices.Contains(values, v) })
			if len(kept) == len(rec.Values) {
				return fmt.Errorf("%s record set %q has none of the values %q", rec.Type, rec.Name, values)
			}
			if len(kept) == 0 {
				return cl.DeleteRecord(cmd.Context(), zone, typ, name)
			}
			rec.Values = kept
			out, err := cl.PutRecord(cmd.Context(), zone, rec)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	flags(remove, true)
	remove.Flags().StringArrayVar(&values, "value", nil, "a value to remove; repeat for more")

	list := &cobra.Command{
		Use: "list", Short: "List a zone's record sets", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.dnsClient()
			if err != nil {
				return err
			}
			out, err := cl.Records(cmd.Context(), zone)
			if err != nil {
				return err
			}
			if typ != "" {
				out = slices.DeleteFunc(out, func(r dnszone.Record) bool { return !strings.EqualFold(r.Type, typ) })
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	flags(list, false)

	c.AddCommand(add, remove, list)
	return c
}

func parseLinks(ss []string) ([]netip.Prefix, error) {
	ps, err := dnszone.ParsePrefixes(ss)
	if err != nil {
		return nil, fmt.Errorf("--link %w", err)
	}
	return ps, nil
}

// dnsClient reaches the zone API the way t.client reaches the service API:
// same credentials, CA and address, signing a service SAS per request.
func (t *target) dnsClient() (*dnszone.Client, error) {
	base, hc, sign, err := t.management()
	if err != nil {
		return nil, err
	}
	return dnszone.NewClient(base, hc, sign), nil
}
