package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto is a transport protocol an allow rule may name.
type Proto string

const (
	TCP  Proto = "tcp"
	UDP  Proto = "udp"
	ICMP Proto = "icmp" // ICMPv6 for IPv6 destinations
)

// PortRange is an inclusive destination port range; the zero value
// means every port.
type PortRange struct {
	From, To uint16
}

// Any reports whether the range matches every port.
func (p PortRange) Any() bool { return p.From == 0 && p.To == 0 }

func (p PortRange) String() string {
	if p.From == p.To {
		return strconv.Itoa(int(p.From))
	}
	return fmt.Sprintf("%d-%d", p.From, p.To)
}

// Rule allows traffic to a destination network, optionally only one
// protocol and port range.
type Rule struct {
	Proto Proto
	Net   netip.Prefix
	Ports PortRange
}

// String renders the rule in the syntax ParseRule reads.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(string(r.Proto))
	b.WriteByte(':')
	if r.Net.Addr().Is6() {
		fmt.Fprintf(&b, "[%s]/%d", r.Net.Addr(), r.Net.Bits())
	} else {
		b.WriteString(r.Net.String())
	}
	if !r.Ports.Any() {
		b.WriteString(":" + r.Ports.String())
	}
	return b.String()
}

// MarshalText renders the rule as a string, so policies serialise as
// lists of rule strings.
func (r Rule) MarshalText() ([]byte, error) {
	if err := r.validate(""); err != nil {
		return nil, err
	}
	return []byte(r.String()), nil
}

// UnmarshalText parses a rule string.
func (r *Rule) UnmarshalText(b []byte) error {
	v, err := ParseRule(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// MaxRuleLen bounds a rule string; anything longer is not a rule.
const MaxRuleLen = 128

// ParseRule parses "proto:cidr[:port[-port]]": tcp:10.0.0.0/8:443,
// udp:[2001:db8::]/32:53-54, icmp:0.0.0.0/0. IPv6 addresses are
// bracketed; a bare address means that one host. Errors are
// KindInvalidArgument and name the field.
func ParseRule(s string) (Rule, error) {
	return parseRule(s, "rule")
}

func parseRule(s, field string) (Rule, error) {
	var r Rule
	if len(s) > MaxRuleLen {
		return r, fieldErr(field, s, fmt.Errorf("longer than %d bytes", MaxRuleLen))
	}
	proto, rest, ok := strings.Cut(s, ":")
	if !ok {
		return r, fieldErr(field, s, errors.New("want proto:cidr[:ports], e.g. tcp:10.0.0.0/8:443"))
	}
	r.Proto = Proto(proto)
	var cidr, ports string
	hasPorts := false
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return r, fieldErr(field+".cidr", rest, errors.New("missing ']' after IPv6 address"))
		}
		addr, after := rest[1:end], rest[end+1:]
		bits := ""
		switch {
		case strings.HasPrefix(after, "/"):
			bits, ports, hasPorts = strings.Cut(after[1:], ":")
		case strings.HasPrefix(after, ":"):
			ports, hasPorts = after[1:], true
		case after != "":
			return r, fieldErr(field+".cidr", rest, errors.New("unexpected text after ']'"))
		}
		a, err := netip.ParseAddr(addr)
		if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
			return r, fieldErr(field+".cidr", addr, errors.New("bad IPv6 address"))
		}
		if bits == "" {
			cidr = a.String() + "/128"
		} else {
			cidr = a.String() + "/" + bits
		}
	} else {
		cidr, ports, hasPorts = strings.Cut(rest, ":")
		if strings.Count(cidr, ".") != 3 && strings.Contains(rest, "::") {
			return r, fieldErr(field+".cidr", rest, errors.New("IPv6 addresses must be bracketed: [2001:db8::]/32"))
		}
		if !strings.Contains(cidr, "/") {
			cidr += "/32"
		}
	}
	p, err := parsePrefix(cidr)
	if err != nil {
		return r, fieldErr(field+".cidr", cidr, err)
	}
	r.Net = p
	if hasPorts {
		pr, err := parsePorts(ports)
		if err != nil {
			return r, fieldErr(field+".ports", ports, err)
		}
		r.Ports = pr
	}
	if err := r.validate(field); err != nil {
		return Rule{}, err
	}
	return r, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	a, bits, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, errors.New("missing /prefix")
	}
	addr, err := netip.ParseAddr(a)
	if err != nil || addr.Zone() != "" || addr.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("bad address %q", a)
	}
	n, err := strconv.Atoi(bits)
	if err != nil || bits != strconv.Itoa(n) || n < 0 || n > addr.BitLen() {
		return netip.Prefix{}, fmt.Errorf("prefix length %q: want 0..%d", bits, addr.BitLen())
	}
	p := netip.PrefixFrom(addr, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("host bits set (did you mean %v?)", p.Masked())
	}
	return p, nil
}

func parsePorts(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	from, err := parsePort(lo)
	if err != nil {
		return PortRange{}, err
	}
	to := from
	if isRange {
		if to, err = parsePort(hi); err != nil {
			return PortRange{}, err
		}
	}
	return PortRange{From: from, To: to}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || s != strconv.FormatUint(n, 10) {
		return 0, fmt.Errorf("port %q: want 1..65535", s)
	}
	return uint16(n), nil
}

// validate checks one rule; field prefixes the error's field name.
func (r Rule) validate(field string) error {
	if field == "" {
		field = "rule"
	}
	switch r.Proto {
	case TCP, UDP, ICMP:
	default:
		return fieldErr(field+".proto", string(r.Proto), errors.New("want tcp, udp or icmp"))
	}
	if !r.Net.IsValid() {
		return fieldErr(field+".cidr", "", errors.New("missing destination network"))
	}
	if r.Net.Addr().Zone() != "" || r.Net.Addr().Is4In6() {
		return fieldErr(field+".cidr", r.Net.String(), errors.New("zoned or IPv4-mapped addresses are not allowed"))
	}
	if r.Net.Masked() != r.Net {
		return fieldErr(field+".cidr", r.Net.String(), fmt.Errorf("host bits set (did you mean %v?)", r.Net.Masked()))
	}
	if !r.Ports.Any() {
		if r.Proto == ICMP {
			return fieldErr(field+".ports", r.Ports.String(), errors.New("icmp has no ports"))
		}
		if r.Ports.From == 0 || r.Ports.To == 0 {
			return fieldErr(field+".ports", r.Ports.String(), errors.New("port 0 is not a destination; want 1..65535"))
		}
		if r.Ports.From > r.Ports.To {
			return fieldErr(field+".ports", r.Ports.String(), errors.New("range runs backwards"))
		}
	}
	return nil
}

// Policy is one VM's egress policy. Everything not allowed is dropped.
// Replies to the VM's own connections (established/related) always pass.
type Policy struct {
	// Allow lists the destinations the VM may open connections to.
	Allow []Rule `json:"allow,omitempty"`
	// DNS lists resolvers the VM may query (UDP and TCP port 53), even
	// when they are on the host or in a denied range.
	DNS []netip.Addr `json:"dns,omitempty"`
	// The link-local metadata addresses (169.254.169.254,
	// fd00:ec2::254), the host itself and other VMs are denied before the
	// allow rules are consulted, so a broad rule (tcp:0.0.0.0/0:443) does
	// not open them; setting one of these lifts that deny and the allow
	// rules decide.
	AllowMetadata bool `json:"allow_metadata,omitempty"`
	AllowHost     bool `json:"allow_host,omitempty"`
	AllowVMs      bool `json:"allow_vms,omitempty"`
}

// MaxRules bounds a policy's allow list (and its DNS list).
const MaxRules = 1024

// ParsePolicy builds a policy from rule strings; errors name the index.
func ParsePolicy(rules []string, dns ...string) (Policy, error) {
	var p Policy
	// Refuse an oversized list before parsing (and allocating) any of it;
	// Validate would refuse it anyway, but only after the work.
	if len(rules) > MaxRules {
		return Policy{}, fieldErr("allow", strconv.Itoa(len(rules)), fmt.Errorf("more than %d rules", MaxRules))
	}
	if len(dns) > MaxRules {
		return Policy{}, fieldErr("dns", strconv.Itoa(len(dns)), fmt.Errorf("more than %d resolvers", MaxRules))
	}
	for i, s := range rules {
		r, err := parseRule(s, fmt.Sprintf("allow[%d]", i))
		if err != nil {
			return Policy{}, err
		}
		p.Allow = append(p.Allow, r)
	}
	for i, s := range dns {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Policy{}, fieldErr(fmt.Sprintf("dns[%d]", i), s, errors.New("bad address"))
		}
		p.DNS = append(p.DNS, a)
	}
	return p, p.Validate()
}

// Validate checks every field; it is called by Apply before any kernel
// call.
func (p Policy) Validate() error {
	if len(p.Allow) > MaxRules {
		return fieldErr("allow", strconv.Itoa(len(p.Allow)), fmt.Errorf("more than %d rules", MaxRules))
	}
	if len(p.DNS) > MaxRules {
		return fieldErr("dns", strconv.Itoa(len(p.DNS)), fmt.Errorf("more than %d resolvers", MaxRules))
	}
	for i, r := range p.Allow {
		if err := r.validate(fmt.Sprintf("allow[%d]", i)); err != nil {
			return err
		}
	}
	for i, a := range p.DNS {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || a.Is4In6() || a.IsMulticast() {
			return fieldErr(fmt.Sprintf("dns[%d]", i), a.String(), errors.New("want a unicast resolver address"))
		}
	}
	return nil
}
