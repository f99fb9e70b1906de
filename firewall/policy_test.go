package firewall

import (
	"encoding/json"
	"errors"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestParseRule(t *testing.T) {
	tests := []struct {
		in    string
		want  string // canonical String(); empty = error expected
		field string // field named by the error
	}{
		{"tcp:10.0.0.0/8:443", "tcp:10.0.0.0/8:443", ""},
		{"udp:[2001:db8::]/32:53-54", "udp:[2001:db8::]/32:53-54", ""},
		{"icmp:0.0.0.0/0", "icmp:0.0.0.0/0", ""},
		{"icmp:[::]/0", "icmp:[::]/0", ""},
		{"tcp:1.2.3.4", "tcp:1.2.3.4/32", ""},
		{"tcp:[2001:db8::1]:22", "tcp:[2001:db8::1]/128:22", ""},
		{"udp:192.168.0.0/16", "udp:192.168.0.0/16", ""},
		{"tcp:0.0.0.0/0:1-65535", "tcp:0.0.0.0/0:1-65535", ""},
		{"", "", "rule"},
		{"tcp", "", "rule"},
		{"sctp:10.0.0.0/8", "", "rule.proto"},
		{"TCP:10.0.0.0/8", "", "rule.proto"},
		{"tcp:10.0.0.1/8:443", "", "rule.cidr"},
		{"tcp:10.0.0.0/33", "", "rule.cidr"},
		{"tcp:10.0.0.0/-1", "", "rule.cidr"},
		{"tcp:10.0.0.0/08", "", "rule.cidr"},
		{"tcp:300.0.0.0/8", "", "rule.cidr"},
		{"tcp:2001:db8::/32", "", "rule.cidr"},
		{"tcp:[2001:db8::/32", "", "rule.cidr"},
		{"tcp:[10.0.0.1]/32", "", "rule.cidr"},
		{"tcp:[fe80::1%eth0]/128", "", "rule.cidr"},
		{"tcp:[::ffff:1.2.3.4]/128", "", "rule.cidr"},
		{"tcp:[2001:db8::]x", "", "rule.cidr"},
		{"tcp:10.0.0.0/8:0", "", "rule.ports"},
		{"tcp:10.0.0.0/8:65536", "", "rule.ports"},
		{"tcp:10.0.0.0/8:54-53", "", "rule.ports"},
		{"tcp:10.0.0.0/8:+443", "", "rule.ports"},
		{"tcp:10.0.0.0/8:", "", "rule.ports"},
		{"icmp:10.0.0.0/8:7", "", "rule.ports"},
		{"tcp:" + strings.Repeat("1", 200), "", "rule"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := ParseRule(tt.in)
			if tt.want != "" {
				if err != nil || r.String() != tt.want {
					t.Fatalf("got %v, %v; want %s", r, err, tt.want)
				}
				// Canonical strings parse back to the same rule.
				back, err := ParseRule(r.String())
				if err != nil || back != r {
					t.Fatalf("round trip: %v %v", back, err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrInvalidArgument) || e.Field != tt.field {
				t.Fatalf("got %v; want InvalidArgument naming %s", err, tt.field)
			}
		})
	}
}

func TestPolicyValidation(t *testing.T) {
	_, err := ParsePolicy([]string{"tcp:10.0.0.0/8:443", "udp:10.0.0.0/8:99999"})
	var e *Error
	if !errors.As(err, &e) || e.Field != "allow[1].ports" {
		t.Fatalf("got %v, want field allow[1].ports", err)
	}
	if _, err := ParsePolicy(nil, "not-an-ip"); !errors.As(err, &e) || e.Field != "dns[0]" {
		t.Fatalf("got %v, want field dns[0]", err)
	}
	bad := []Policy{
		{Allow: []Rule{{Proto: "gre", Net: netip.MustParsePrefix("0.0.0.0/0")}}},
		{Allow: []Rule{{Proto: TCP}}},
		{Allow: []Rule{{Proto: TCP, Net: netip.MustParsePrefix("10.0.0.1/8")}}},
		{Allow: []Rule{{Proto: ICMP, Net: netip.MustParsePrefix("10.0.0.0/8"), Ports: PortRange{1, 1}}}},
		{DNS: []netip.Addr{netip.MustParseAddr("0.0.0.0")}},
		{Allow: make([]Rule, MaxRules+1)},
		{DNS: make([]netip.Addr, MaxRules+1)},
	}
	// Oversized lists are refused before any element is parsed.
	many := make([]string, MaxRules+1)
	if _, err := ParsePolicy(many); !errors.As(err, &e) || e.Field != "allow" {
		t.Fatalf("%d rules: got %v, want field allow", len(many), err)
	}
	if _, err := ParsePolicy(nil, many...); !errors.As(err, &e) || e.Field != "dns" {
		t.Fatalf("%d resolvers: got %v, want field dns", len(many), err)
	}
	for i, p := range bad {
		if err := p.Validate(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("policy %d: got %v, want InvalidArgument", i, err)
		}
	}
	// Policies serialise their rules as strings.
	p, err := ParsePolicy([]string{"tcp:10.0.0.0/8:443", "udp:[2001:db8::]/32:53-54"}, "10.0.0.53")
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(p)
	if err != nil || string(js) != `{"allow":["tcp:10.0.0.0/8:443","udp:[2001:db8::]/32:53-54"],"dns":["10.0.0.53"]}` {
		t.Fatalf("json: %s %v", js, err)
	}
	var back Policy
	if err := json.Unmarshal(js, &back); err != nil || len(back.Allow) != 2 || back.Allow[1] != p.Allow[1] {
		t.Fatalf("json back: %+v %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"allow":["tcp:nope"]}`), &back); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad json rule: %v", err)
	}
}

func TestVMRefValidation(t *testing.T) {
	good := VMRef{Owner: "vm", Slot: 1, Iface: "hthv1", Addr: netip.MustParseAddr("10.200.0.6")}
	tests := []struct {
		field string
		mut   func(*VMRef)
	}{
		{"vm.owner", func(v *VMRef) { v.Owner = "" }},
		{"vm.owner", func(v *VMRef) { v.Owner = "a b" }},
		{"vm.owner", func(v *VMRef) { v.Owner = `a"b` }},
		{"vm.iface", func(v *VMRef) { v.Iface = "a-very-long-iface-name" }},
		{"vm.addr", func(v *VMRef) { v.Addr = netip.Addr{} }},
		{"vm.addr", func(v *VMRef) { v.Addr = netip.MustParseAddr("::1") }},
		{"vm.mac", func(v *VMRef) { v.Bridge = "hearth0" }},
		{"vm.mac", func(v *VMRef) { v.MAC = net.HardwareAddr{1, 2} }},
		{"vm.addr6", func(v *VMRef) { v.Addr6 = netip.MustParseAddr("1.2.3.4") }},
	}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		v := good
		tt.mut(&v)
		var e *Error
		if err := v.validate(); !errors.As(err, &e) || e.Field != tt.field {
			t.Errorf("got %v, want field %s", err, tt.field)
		}
	}
}

func TestTags(t *testing.T) {
	for _, c := range []struct {
		slot  uint64
		owner string
	}{{0, "a"}, {42, "vm-1:x"}, {4294967295, "k"}} {
		s, o, ok := parseTag(tag(c.slot, c.owner))
		if !ok || s != c.slot || o != c.owner {
			t.Errorf("tag round trip %v: %d %q %v", c, s, o, ok)
		}
	}
	for _, bad := range []string{"", "hearth:", "hearth:x:y", "other:1:a", "hearth:1"} {
		if _, _, ok := parseTag(bad); ok {
			t.Errorf("parseTag(%q) accepted", bad)
		}
	}
	if s, ok := parseVMChain("vm-12"); !ok || s != 12 {
		t.Error("parseVMChain")
	}
	for _, bad := range []string{"vm-", "vm-01", "forward", "vm-x"} {
		if _, ok := parseVMChain(bad); ok {
			t.Errorf("parseVMChain(%q) accepted", bad)
		}
	}
}

// golden compares got with testdata/name, rewriting it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from golden:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestRuleGenerationGolden(t *testing.T) {
	pol, err := ParsePolicy([]string{"tcp:10.0.0.0/8:443", "udp:[2001:db8::]/32:53-54", "icmp:0.0.0.0/0", "icmp:[::]/0", "tcp:198.51.100.7/32"}, "10.0.0.53")
	if err != nil {
		t.Fatal(err)
	}
	vmNets := []netip.Prefix{netip.MustParsePrefix("10.200.0.0/16")}
	cases := []struct {
		name string
		vm   VMRef
		pol  Policy
	}{
		{"netns", VMRef{Owner: "vm-a", Slot: 3, Iface: "hthv3", Addr: netip.MustParseAddr("10.200.0.14")}, pol},
		{"bridge", VMRef{Owner: "vm-b", Slot: 4, Iface: "htht4", Bridge: "hearth0", Addr: netip.MustParseAddr("172.30.0.6"),
			MAC: net.HardwareAddr{0x02, 0x68, 0xac, 0x1e, 0, 6}}, pol},
		{"open", VMRef{Owner: "vm-c", Slot: 5, Iface: "hthv5", Addr: netip.MustParseAddr("10.200.0.22"), Addr6: netip.MustParseAddr("fd00::5")},
			Policy{AllowMetadata: true, AllowHost: true, AllowVMs: true}},
		{"empty", VMRef{Owner: "vm-d", Slot: 6, Iface: "hthv6", Addr: netip.MustParseAddr("10.200.0.26")}, Policy{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b strings.Builder
			b.WriteString("# nftables chain vm-N\n")
			for _, s := range Plan(c.vm, c.pol, vmNets) {
				b.WriteString(s.String() + "\n")
				if len(compile(s)) == 0 {
					t.Fatalf("statement %q compiles to nothing", s)
				}
			}
			for _, fam := range []int{4, 6} {
				b.WriteString("\n# ip" + map[int]string{4: "", 6: "6"}[fam] + "tables-restore\n")
				b.WriteString(restoreScript(c.vm, IPTablesRules(c.vm, c.pol, vmNets, fam), iptChain(c.vm.Slot, 'b'),
					[]string{"-A HEARTH-FWD -i x -m comment --comment \"" + tag(c.vm.Slot, c.vm.Owner) + "\" -j " + iptChain(c.vm.Slot, 'a')},
					iptChain(c.vm.Slot, 'a')))
			}
			golden(t, c.name+".golden", b.String())
		})
	}
}

func TestJumpRegexp(t *testing.T) {
	lines := map[string]string{
		`-A HEARTH-FWD -i hthv3 -m comment --comment "hearth:3:vm-a" -j hth-3-a`:                      "3 vm-a hth-3-a",
		`-A HEARTH-FWD -i hthv3 -m comment --comment hearth:3:vm-a -j hth-3-b`:                        "3 vm-a hth-3-b",
		`-A HEARTH-IN -m physdev --physdev-in htht4 -m comment --comment "hearth:4:k" -j hth-4-a`:     "4 k hth-4-a",
		`-A HEARTH-FWD -i hthv+ -m comment --comment "hearth:guard" -j DROP`:                          "",
		`-A HEARTH-FWD -i hthv3 -m comment --comment "hearth:3:vm-a" -j hth-3-a -m something --extra`: "",
	}
	for l, want := range lines {
		m := jumpRE.FindStringSubmatch(l)
		got := ""
		if m != nil {
			got = m[1] + " " + m[2] + " " + m[3]
		}
		if got != want {
			t.Errorf("%s: got %q want %q", l, got, want)
		}
	}
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"tcp:10.0.0.0/8:443", "udp:[2001:db8::]/32:53-54", "icmp:0.0.0.0/0", "tcp:1.2.3.4", "tcp:[::1]:1", "x", "tcp:[", "udp:1.2.3.4/32:1-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Kind != KindInvalidArgument || e.Field == "" {
				t.Fatalf("%q: error %v is not a field-naming InvalidArgument", s, err)
			}
			return
		}
		if len(s) > MaxRuleLen {
			t.Fatalf("accepted a rule of %d bytes (limit %d)", len(s), MaxRuleLen)
		}
		if err := r.validate(""); err != nil {
			t.Fatalf("%q parsed into invalid rule %v: %v", s, r, err)
		}
		back, err := ParseRule(r.String())
		if err != nil || back != r {
			t.Fatalf("%q: canonical %q does not round-trip: %v %v", s, r.String(), back, err)
		}
		// Every accepted rule compiles for both backends.
		vm := VMRef{Owner: "f", Slot: 1, Iface: "hthv1", Addr: netip.MustParseAddr("10.0.0.2")}
		for _, st := range Plan(vm, Policy{Allow: []Rule{r}}, nil) {
			_ = compile(st)
			_, _ = st.iptablesArgs(4)
			_, _ = st.iptablesArgs(6)
		}
	})
}
