package main

import (
	"fmt"
	"os"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func doctorCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what smolvm needs, with the fix for each problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := smolvm.Doctor(cmd.Context(), g.options()...)
			if asJSON {
				return printJSON(os.Stdout, checks)
			}
			failed := 0
			for _, c := range checks {
				mark := map[string]string{"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[c.Status]
				fmt.Printf("[%s] %-12s %s\n", mark, c.Name, c.Detail)
				if c.Fix != "" {
					fmt.Printf("       %-12s fix: %s\n", "", c.Fix)
				}
				if c.Status == "fail" {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed", failed)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
