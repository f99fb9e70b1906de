package qemu

import (
	"context"
	"errors"
	"fmt"

	"github.com/hearth-vm/hearth/vmm"
)

// blockIOThrottle is the argument of QMP block_set_io_throttle. QEMU
// requires all six limits; 0 means unlimited.
type blockIOThrottle struct {
	Device string `json:"device"`
	BPS    int64  `json:"bps"`
	BPSRd  int64  `json:"bps_rd"`
	BPSWr  int64  `json:"bps_wr"`
	IOPS   int64  `json:"iops"`
	IOPSRd int64  `json:"iops_rd"`
	IOPSWr int64  `json:"iops_wr"`
}

// throttleArgs maps a rate-limit update onto block_set_io_throttle
// arguments, refusing what QEMU cannot do before anything is sent:
// network limits (a tap netdev has no throttling) and one-time bursts.
func throttleArgs(u vmm.RateLimitUpdate) ([]blockIOThrottle, error) {
	var errs []error
	var out []blockIOThrottle
	for _, d := range u.Drives {
		if d.ID == "" {
			errs = append(errs, invalid("drives.id", "empty"))
			continue
		}
		bps, iops, err := throttleRates("drives."+d.ID+".rate_limiter", d.Limit)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// The block backend's name is the -drive id, which the command
		// line derives from the drive id.
		out = append(out, blockIOThrottle{Device: "drive-" + d.ID, BPS: bps, IOPS: iops})
	}
	for _, n := range u.NICs {
		if n.RX != nil && (n.RX.Bandwidth != nil || n.RX.Ops != nil) {
			errs = append(errs, unsupported("network-interfaces."+n.ID+".rx_rate_limiter", "QEMU has no rate limiting for tap netdevs"))
		}
		if n.TX != nil && (n.TX.Bandwidth != nil || n.TX.Ops != nil) {
			errs = append(errs, unsupported("network-interfaces."+n.ID+".tx_rate_limiter", "QEMU has no rate limiting for tap netdevs"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// SetRateLimits implements vmm.RateLimitSetter with QMP
// block_set_io_throttle, one command per drive. Removing a NIC's limits
// is accepted (it has none); setting them is Unsupported.
func (m *Machine) SetRateLimits(ctx context.Context, u vmm.RateLimitUpdate) error {
	args, err := throttleArgs(u)
	if err != nil {
		return err
	}
	for _, a := range args {
		if err := m.command(ctx, "block_set_io_throttle", a, nil); err != nil {
			return fmt.Errorf("throttle %s of %s: %w", a.Device, m.vmid, err)
		}
	}
	return nil
}
