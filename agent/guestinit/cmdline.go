package guestinit

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode"

	"github.com/hearth-vm/hearth/agent"
)

// Cmdline is what the agent reads from the kernel command line.
type Cmdline struct {
	Token    string
	IP       *IPConfig
	Iface    string
	Hostname string
	Entropy  []byte
	Debug    bool
	// Params holds every hearth.* parameter as given.
	Params map[string]string
}

// IPConfig is hearth.ip.
type IPConfig struct {
	Addr    netip.Prefix // address and prefix length
	Gateway netip.Addr   // invalid when absent
	DNS     []netip.Addr
}

func (c *IPConfig) String() string {
	s := c.Addr.String()
	if c.Gateway.IsValid() {
		s += "," + c.Gateway.String()
	} else if len(c.DNS) > 0 {
		s += ","
	}
	for _, d := range c.DNS {
		s += "," + d.String()
	}
	return s
}

// SplitCmdline splits a kernel command line into parameters the way the
// kernel does: on whitespace, with double quotes grouping (and removed).
func SplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case unicode.IsSpace(r) && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ParseCmdline reads the hearth.* parameters. A malformed parameter is
// reported in the joined error but does not stop the others: the agent
// should still come up (and say what was wrong) rather than not at all.
// Later occurrences of a parameter win, as with the kernel's own.
func ParseCmdline(s string) (*Cmdline, error) {
	c := &Cmdline{Params: map[string]string{}}
	for _, p := range SplitCmdline(s) {
		k, v, _ := strings.Cut(p, "=")
		if strings.HasPrefix(k, "hearth.") {
			c.Params[k] = v
		}
	}
	var errs []error
	for k, v := range c.Params {
		switch k {
		case "hearth.token":
			c.Token = v
		case "hearth.ip":
			ip, err := ParseIP(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("hearth.ip: %w", err))
				continue
			}
			c.IP = ip
		case "hearth.iface":
			if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \x00") {
				errs = append(errs, fmt.Errorf("hearth.iface: bad interface name %q", v))
				continue
			}
			c.Iface = v
		case "hearth.hostname":
			if err := validHostname(v); err != nil {
				errs = append(errs, fmt.Errorf("hearth.hostname: %w", err))
				continue
			}
			c.Hostname = v
		case "hearth.entropy":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) == 0 || len(b) > 4096 {
				errs = append(errs, errors.New("hearth.entropy: want 1 to 4096 hex-encoded bytes"))
				continue
			}
			c.Entropy = b
		case "hearth.debug":
			c.Debug = v == "1" || v == "true" || v == "yes"
		}
	}
	return c, errors.Join(errs...)
}

// ParseIP parses "<addr>/<prefix>[,<gw>[,<dns>...]]"; the gateway may be
// empty ("10.0.0.2/24,,1.1.1.1"). The gateway must be of the address's
// family; DNS servers (at most three) may be of either.
func ParseIP(v string) (*IPConfig, error) {
	parts := strings.Split(v, ",")
	pfx, err := netip.ParsePrefix(strings.TrimSpace(parts[0]))
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", parts[0], err)
	}
	if pfx.Addr().Zone() != "" {
		return nil, fmt.Errorf("address %q: zones are not supported", parts[0])
	}
	cfg := &IPConfig{Addr: pfx}
	if len(parts) > 1 && strings.TrimSpace(parts[1]) != "" {
		gw, err := netip.ParseAddr(strings.TrimSpace(parts[1]))
		if err != nil {
			return nil, fmt.Errorf("gateway %q: %w", parts[1], err)
		}
		if gw.Is4() != pfx.Addr().Is4() {
			return nil, fmt.Errorf("gateway %s is not of the address's family", gw)
		}
		if gw == pfx.Addr() {
			return nil, fmt.Errorf("gateway %s is the address itself", gw)
		}
		cfg.Gateway = gw
	}
	for _, d := range parts[min(2, len(parts)):] {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		a, err := netip.ParseAddr(d)
		if err != nil {
			return nil, fmt.Errorf("dns %q: %w", d, err)
		}
		cfg.DNS = append(cfg.DNS, a)
	}
	if len(cfg.DNS) > 3 {
		// resolv.conf honours at most three nameservers.
		return nil, fmt.Errorf("%d dns servers, at most 3", len(cfg.DNS))
	}
	return cfg, nil
}

func validHostname(h string) error { return agent.ValidateHostname(h) }
