// Package nftexpr builds the few nftables expression sequences hearth's
// network and firewall packages need (interface, address, port, state
// and MAC matches), so neither repeats register and offset arithmetic.
// It only builds values; it never talks to the kernel.
package nftexpr

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// IfName pads an interface name the way the kernel stores it (IFNAMSIZ,
// NUL-filled).
func IfName(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// Iif matches the input interface name exactly; a trailing "*" matches a
// prefix (like nft's "hthv*").
func Iif(name string) []expr.Any { return ifMatch(expr.MetaKeyIIFNAME, name) }

// Oif is Iif for the output interface.
func Oif(name string) []expr.Any { return ifMatch(expr.MetaKeyOIFNAME, name) }

func ifMatch(key expr.MetaKey, name string) []expr.Any {
	if l := len(name); l > 0 && name[l-1] == '*' {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(name[:l-1])},
		}
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: IfName(name)},
	}
}

// NFProto matches the packet's family (unix.NFPROTO_IPV4 / _IPV6); needed
// before any address payload match in an inet table.
func NFProto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// Family returns the NFPROTO value for an address.
func Family(a netip.Addr) byte {
	if a.Is4() {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

// Addr matches the source (src=true) or destination address against p
// (a prefix; a single address is a /32 or /128). neq inverts the match.
// The caller must have matched the family first.
func Addr(src bool, p netip.Prefix, neq bool) []expr.Any {
	p = p.Masked()
	var off, l uint32 = 16, 4
	if p.Addr().Is4() {
		if src {
			off = 12
		}
	} else {
		off, l = 24, 16
		if src {
			off = 8
		}
	}
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l}}
	if p.Bits() != p.Addr().BitLen() {
		mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: l, Mask: mask, Xor: make([]byte, l)})
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: p.Addr().AsSlice()})
}

// L4Proto matches the transport protocol number.
func L4Proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// DPort matches a destination port or inclusive range (TCP/UDP; the
// caller must have matched the protocol first).
func DPort(from, to uint16) []expr.Any {
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
	if from == to {
		return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(from)})
	}
	return append(out, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: be16(from), ToData: be16(to)})
}

// CtState matches any of the conntrack state bits (expr.CtStateBit*).
func CtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, bits), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// EtherSrcNot matches frames whose Ethernet source is not mac.
func EtherSrcNot(mac net.HardwareAddr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(mac)},
	}
}

// DstLocal matches packets addressed to one of this namespace's own
// addresses (fib daddr type local).
func DstLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
	}
}

// Counter counts packets and bytes (for nft list ruleset and metrics).
func Counter() expr.Any { return &expr.Counter{} }

// Accept, Drop and Jump are verdicts.
func Accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }

// Drop is the drop verdict.
func Drop() expr.Any { return &expr.Verdict{Kind: expr.VerdictDrop} }

// Jump jumps to chain.
func Jump(chain string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

// Join concatenates expression sequences into one rule body.
func Join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
