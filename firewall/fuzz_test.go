package firewall

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParsePolicy feeds a JSON list of rules and DNS servers (the shape
// the API receives) to ParsePolicy: accepted policies re-validate and
// survive a JSON round trip; the rule count limit holds.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"allow":["tcp:10.0.0.0/8:443","icmp:[2001:db8::]/32"],"dns":["10.0.0.53","2001:db8::53"]}`))
	f.Add([]byte(`{"allow":[],"dns":["0.0.0.0"]}`))
	f.Add([]byte(`{"dns":["ff02::1","fe80::1%eth0","::ffff:10.0.0.1"]}`))
	f.Add([]byte(`{"allow":["tcp:10.0.0.0/8:443","tcp:10.0.0.0/8:443"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var in struct {
			Allow []string `json:"allow"`
			DNS   []string `json:"dns"`
		}
		if json.Unmarshal(b, &in) != nil {
			return
		}
		p, err := ParsePolicy(in.Allow, in.DNS...)
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) || fe.Kind != KindInvalidArgument {
				t.Fatalf("ParsePolicy: error %T %v is not an invalid-argument *Error", err, err)
			}
			return
		}
		if len(p.Allow) != len(in.Allow) || len(p.DNS) != len(in.DNS) || len(p.Allow) > MaxRules {
			t.Fatalf("policy of %d rules, %d resolvers from %d, %d inputs", len(p.Allow), len(p.DNS), len(in.Allow), len(in.DNS))
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted policy does not re-validate: %v", err)
		}
		j, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("marshal accepted policy: %v", err)
		}
		var back Policy
		if err := json.Unmarshal(j, &back); err != nil {
			t.Fatalf("unmarshal %s: %v", j, err)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("policy %s after a JSON round trip does not validate: %v", j, err)
		}
		for i := range p.Allow {
			if back.Allow[i] != p.Allow[i] {
				t.Fatalf("rule %d changed in a JSON round trip: %+v -> %+v", i, p.Allow[i], back.Allow[i])
			}
		}
		for i := range p.DNS {
			if back.DNS[i] != p.DNS[i] {
				t.Fatalf("dns %d changed in a JSON round trip: %v -> %v", i, p.DNS[i], back.DNS[i])
			}
		}
	})
}
