package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/store"
	"github.com/spf13/cobra"
)

// readState opens the state dir read-only. It fails with a clear message
// when a runtime holds the dir.
func readState(g *globals) (*store.Store, error) {
	st, err := store.OpenReadOnly(g.stateDir)
	if err != nil {
		return nil, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "read state", Err: err}
	}
	return st, nil
}

func psCmd(g *globals) *cobra.Command {
	var asJSON, all bool
	var labels []string
	var status string
	cmd := &cobra.Command{
		Use:     "ps",
		Short:   "List VMs",
		Long:    "List VMs with their status, backend and VMM pid: from the daemon when one runs, else straight from the state dir. Stopped and crashed VMs are shown with -a.",
		Example: "  hearth ps\n  hearth ps -a -o json\n  hearth ps --label tenant=acme --status paused",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if status != "" && !hearth.Status(status).Valid() {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "ps", Err: fmt.Errorf("--status %q: not a VM status", status)}
			}
			views, err := listViews(cmd.Context(), g)
			if err != nil {
				return err
			}
			views = filterViews(views, labels, hearth.Status(status))
			if !all && status == "" {
				kept := views[:0]
				for _, v := range views {
					if v.Status != hearth.StatusStopped && v.Status != hearth.StatusCrashed {
						kept = append(kept, v)
					}
				}
				views = kept
			}
			if asJSON || g.output == "json" {
				return writeJSON(cmd.OutOrStdout(), views)
			}
			printViews(cmd.OutOrStdout(), views, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include stopped and crashed VMs")
	cmd.Flags().StringArrayVarP(&labels, "label", "l", nil, "only VMs with this label, key or key=value (repeatable; all must match)")
	cmd.Flags().StringVar(&status, "status", "", "only VMs in this status (implies -a)")
	return cmd
}

// listViews asks the daemon when one answers on the socket, and reads the
// state dir directly otherwise.
func listViews(ctx context.Context, g *globals) ([]hearth.View, error) {
	if c, err := daemon(ctx, g); err == nil {
		return c.List(ctx)
	}
	st, err := readState(g)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	recs, err := st.ListVMs()
	if err != nil {
		return nil, &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "ps", Err: err}
	}
	return hearth.ViewsFromRecords(recs), nil
}

// filterViews keeps the VMs carrying every label (key or key=value) and,
// when status is set, in that status; the daemon's GET /v1/vms filters
// the same way.
func filterViews(views []hearth.View, labels []string, status hearth.Status) []hearth.View {
	kept := views[:0:0]
	for _, v := range views {
		ok := status == "" || v.Status == status
		for _, l := range labels {
			k, val, hasVal := strings.Cut(l, "=")
			got, present := v.Spec.Labels[k]
			if !present || hasVal && got != val {
				ok = false
			}
		}
		if ok {
			kept = append(kept, v)
		}
	}
	return kept
}

func printViews(w io.Writer, views []hearth.View, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tBACKEND\tPID\tVCPUS\tMEMORY\tAGE")
	for _, v := range views {
		pid := "-"
		if v.Pid > 0 {
			pid = fmt.Sprint(v.Pid)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\n", v.ID, v.Status, v.Backend, pid, v.Spec.VCPUs, v.Spec.MemoryMiB,
			now.Sub(v.CreatedAt).Round(time.Second))
	}
	tw.Flush()
}

func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func inspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "inspect VM",
		Short:   "Show everything recorded about a VM",
		Long:    "Print a VM as JSON: from the daemon when one runs; without one, the whole record from the state dir (view, spec, VMM handle, key and the host resources it holds).",
		Example: "  hearth inspect web1\n  hearth inspect web1 | jq .spec",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c, err := daemon(cmd.Context(), g); err == nil {
				v, err := c.Get(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return writeJSON(cmd.OutOrStdout(), v)
			}
			st, err := readState(g)
			if err != nil {
				return err
			}
			defer st.Close()
			rec, err := st.GetVM(args[0])
			if errors.Is(err, store.ErrNotFound) {
				return &hearth.Error{Kind: hearth.KindVMNotFound, Op: "inspect", VM: args[0]}
			}
			if err != nil {
				return &hearth.Error{Kind: hearth.KindStatePoisoned, Op: "inspect", VM: args[0], Err: err}
			}
			out := struct {
				hearth.View
				Key       string           `json:"key"`
				Handle    any              `json:"handle,omitempty"`
				Resources []store.Resource `json:"resources,omitempty"`
			}{hearth.ViewsFromRecords([]store.VM{rec})[0], rec.Key, rec.Handle, rec.Resources}
			return writeJSON(cmd.OutOrStdout(), out)
		},
	}
}
