package cli

import (
	"github.com/spf13/cobra"

	"github.com/moat-iot/moat/internal/registry"
)

func moduleCmd() *cobra.Command {
	t := &target{}
	c := &cobra.Command{Use: "module", Short: "Manage module identities"}
	t.flags(c)
	var deviceID, moduleID string
	ids := func(cmd *cobra.Command, module bool) {
		cmd.Flags().StringVarP(&deviceID, "device-id", "d", "", "device id")
		_ = cmd.MarkFlagRequired("device-id")
		if module {
			cmd.Flags().StringVarP(&moduleID, "module-id", "m", "", "module id")
			_ = cmd.MarkFlagRequired("module-id")
		}
	}
	create := &cobra.Command{
		Use: "create", Short: "Create a module identity (SAS keys generated)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			out, err := cl.CreateModule(cmd.Context(), registry.Module{DeviceID: deviceID, ModuleID: moduleID, Authentication: registry.Authentication{Type: registry.AuthSAS}})
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	ids(create, true)
	show := &cobra.Command{
		Use: "show", Short: "Show a module identity", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			out, err := cl.GetModule(cmd.Context(), deviceID, moduleID)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	ids(show, true)
	list := &cobra.Command{
		Use: "list", Short: "List a device's modules", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			out, err := cl.ListModules(cmd.Context(), deviceID)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	ids(list, false)
	del := &cobra.Command{
		Use: "delete", Short: "Delete a module identity", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := t.client()
			if err != nil {
				return err
			}
			return cl.DeleteModule(cmd.Context(), deviceID, moduleID, "")
		},
	}
	ids(del, true)
	c.AddCommand(create, show, list, del)
	return c
}
