package nftexpr

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/nftables/expr"
)

func TestAddr(t *testing.T) {
	tests := []struct {
		src     bool
		prefix  string
		neq     bool
		offset  uint32
		length  uint32
		bitwise bool
		data    []byte
	}{
		{true, "10.0.0.2/32", true, 12, 4, false, []byte{10, 0, 0, 2}},
		{false, "10.0.0.0/8", false, 16, 4, true, []byte{10, 0, 0, 0}},
		{true, "2001:db8::/32", false, 8, 16, true, netip.MustParseAddr("2001:db8::").AsSlice()},
		{false, "::1/128", false, 24, 16, false, netip.MustParseAddr("::1").AsSlice()},
	}
	for _, tt := range tests {
		e := Addr(tt.src, netip.MustParsePrefix(tt.prefix), tt.neq)
		p := e[0].(*expr.Payload)
		if p.Offset != tt.offset || p.Len != tt.length || p.Base != expr.PayloadBaseNetworkHeader {
			t.Errorf("%s: payload %+v", tt.prefix, p)
		}
		_, hasBW := e[1].(*expr.Bitwise)
		if hasBW != tt.bitwise {
			t.Errorf("%s: bitwise %v, want %v", tt.prefix, hasBW, tt.bitwise)
		}
		c := e[len(e)-1].(*expr.Cmp)
		if !bytes.Equal(c.Data, tt.data) || (c.Op == expr.CmpOpNeq) != tt.neq {
			t.Errorf("%s: cmp %+v", tt.prefix, c)
		}
	}
}

func TestIfaceAndPorts(t *testing.T) {
	exact := Iif("hthv3")[1].(*expr.Cmp)
	if len(exact.Data) != 16 || string(exact.Data[:5]) != "hthv3" {
		t.Errorf("exact iif data %q", exact.Data)
	}
	wild := Oif("hthv*")[1].(*expr.Cmp)
	if string(wild.Data) != "hthv" {
		t.Errorf("wildcard data %q", wild.Data)
	}
	if _, ok := DPort(443, 443)[1].(*expr.Cmp); !ok {
		t.Error("single port should compare")
	}
	r, ok := DPort(53, 54)[1].(*expr.Range)
	if !ok || !bytes.Equal(r.FromData, []byte{0, 53}) || !bytes.Equal(r.ToData, []byte{0, 54}) {
		t.Errorf("range %+v", r)
	}
}
