package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/spf13/cobra"
)

// parseLimit reads a rate limit: "none" (lift it), or comma-separated
// buckets "bw:SIZE/PERIOD[:BURST]" (bytes) and "ops:N/PERIOD[:BURST]"
// (operations), e.g. "bw:10M/1s,ops:500/1s". PERIOD is a duration in
// whole milliseconds; a bare unit ("s") means one of it.
func parseLimit(s string) (*hearth.RateLimit, error) {
	if s == "none" {
		return &hearth.RateLimit{}, nil
	}
	rl := &hearth.RateLimit{}
	for part := range strings.SplitSeq(s, ",") {
		kind, rest, ok := strings.Cut(part, ":")
		amount, period, ok2 := strings.Cut(rest, "/")
		if !ok || !ok2 {
			return nil, fmt.Errorf("rate limit %q: want none, or bw:SIZE/PERIOD[:BURST] and/or ops:N/PERIOD[:BURST]", s)
		}
		period, burstS, _ := strings.Cut(period, ":")
		if period != "" && (period[0] < '0' || period[0] > '9') {
			period = "1" + period
		}
		d, err := time.ParseDuration(period)
		if err != nil || d < time.Millisecond || d%time.Millisecond != 0 {
			return nil, fmt.Errorf("rate limit %q: period %q must be a whole number of milliseconds, at least 1ms", s, period)
		}
		var size, burst int64
		switch kind {
		case "bw":
			size, err = parseSize(amount)
			if err == nil && burstS != "" {
				burst, err = parseSize(burstS)
			}
		case "ops":
			size, err = strconv.ParseInt(amount, 10, 64)
			if err == nil && burstS != "" {
				burst, err = strconv.ParseInt(burstS, 10, 64)
			}
		default:
			return nil, fmt.Errorf("rate limit %q: unknown bucket %q (want bw or ops)", s, kind)
		}
		if err != nil || size <= 0 || burst < 0 {
			return nil, fmt.Errorf("rate limit %q: %s amount must be positive", s, kind)
		}
		tb := &hearth.TokenBucket{Size: size, OneTimeBurst: burst, RefillTimeMs: d.Milliseconds()}
		if kind == "bw" {
			rl.Bandwidth = tb
		} else {
			rl.Ops = tb
		}
	}
	return rl, nil
}

func formatLimit(rl *hearth.RateLimit) string {
	if rl == nil || rl.Bandwidth == nil && rl.Ops == nil {
		return "unlimited"
	}
	var parts []string
	f := func(name string, tb *hearth.TokenBucket, amount string) {
		s := fmt.Sprintf("%s %s per %s", name, amount, time.Duration(tb.RefillTimeMs)*time.Millisecond)
		if tb.OneTimeBurst > 0 {
			s += fmt.Sprintf(" (+%d once)", tb.OneTimeBurst)
		}
		parts = append(parts, s)
	}
	if b := rl.Bandwidth; b != nil {
		f("bandwidth", b, humanBytes(b.Size))
	}
	if o := rl.Ops; o != nil {
		f("ops", o, strconv.FormatInt(o.Size, 10))
	}
	return strings.Join(parts, ", ")
}

func updateCmd(g *globals) *cobra.Command {
	var drives []string
	var rx, tx string
	cmd := &cobra.Command{
		Use:     "update VM",
		Aliases: []string{"ratelimit"},
		Short:   "Change a VM's drive and network rate limits",
		Long: `Change the rate limits of a VM's extra drives and of its network interface.
A running or paused VM gets them at once from its VMM (Firecracker: PATCH
/drives and /network-interfaces; QEMU: block throttling; QEMU has no network
limits and refuses them); a stopped or crashed VM gets them on its next
start. They are recorded, so they survive daemon restarts.

A limit is "none" (unlimited) or comma-separated token buckets:
  bw:SIZE/PERIOD[:BURST]   SIZE bytes (K, M, G suffixes) per PERIOD
  ops:N/PERIOD[:BURST]     N operations per PERIOD
PERIOD is a duration in whole milliseconds (1s, 100ms; "s" alone is 1s);
BURST is a one-time extra credit. Each given limit replaces the device's
whole limit: a bucket left out is lifted. Devices not named keep theirs.
The egress policy is changed with "hearth egress".`,
		Example: `  hearth update web1 --drive-limit data=bw:50M/s,ops:2000/s
  hearth update web1 --rx-limit bw:10M/100ms --tx-limit none
  hearth update web1 --drive-limit data=none`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bad := func(err error) error {
				return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "update", VM: args[0], Err: err}
			}
			var u hearth.RateLimits
			for _, d := range drives {
				id, spec, ok := strings.Cut(d, "=")
				if !ok || id == "" {
					return bad(fmt.Errorf("--drive-limit %q: want ID=LIMIT", d))
				}
				rl, err := parseLimit(spec)
				if err != nil {
					return bad(err)
				}
				u.Drives = append(u.Drives, hearth.DriveRateLimit{ID: id, RateLimit: rl})
			}
			for _, x := range []struct{ flag, v string }{{"--rx-limit", rx}, {"--tx-limit", tx}} {
				if x.v == "" {
					continue
				}
				rl, err := parseLimit(x.v)
				if err != nil {
					return bad(fmt.Errorf("%s: %w", x.flag, err))
				}
				if u.Network == nil {
					u.Network = &hearth.NetworkRateLimits{}
				}
				if x.flag == "--rx-limit" {
					u.Network.RxRateLimit = rl
				} else {
					u.Network.TxRateLimit = rl
				}
			}
			if len(u.Drives) == 0 && u.Network == nil {
				return bad(fmt.Errorf("nothing to change: give --drive-limit, --rx-limit and/or --tx-limit"))
			}
			c, err := daemon(cmd.Context(), g)
			if err != nil {
				return err
			}
			v, err := c.SetRateLimits(cmd.Context(), args[0], u)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), v, func(w io.Writer) {
				fmt.Fprintf(w, "%s %s\n", v.ID, v.Status)
				for _, d := range v.Spec.Drives {
					fmt.Fprintf(w, "  drive %-12s %s\n", d.ID, formatLimit(d.RateLimit))
				}
				if n := v.Spec.Network; n != nil && !n.Disabled {
					fmt.Fprintf(w, "  network rx     %s\n", formatLimit(n.RxRateLimit))
					fmt.Fprintf(w, "  network tx     %s\n", formatLimit(n.TxRateLimit))
				}
			})
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&drives, "drive-limit", nil, "drive limit ID=LIMIT (repeatable)")
	f.StringVar(&rx, "rx-limit", "", "network receive limit (LIMIT or none)")
	f.StringVar(&tx, "tx-limit", "", "network transmit limit (LIMIT or none)")
	return cmd
}
