package network

import (
	"fmt"
	"math/big"
	"net/netip"
)

// Prefix math works on netip values for both families. Offsets are
// uint64: an IPv6 /64 has 2^64 addresses, more than any pool hearth will
// index, so offsets past 2^64-1 are simply unreachable rather than wrong.

// Size returns the number of addresses in p, saturated at 2^64-1 (an
// IPv6 prefix shorter than /65 is bigger than any slot index).
func Size(p netip.Prefix) uint64 {
	host := p.Addr().BitLen() - p.Bits()
	if host >= 64 {
		return ^uint64(0)
	}
	return uint64(1) << host
}

// Nth returns the address at offset n inside p (0 is the network
// address). It fails when n lies outside p.
func Nth(p netip.Prefix, n uint64) (netip.Addr, error) {
	if !p.IsValid() {
		return netip.Addr{}, fmt.Errorf("invalid prefix %v", p)
	}
	p = p.Masked()
	if n >= Size(p) && Size(p) != ^uint64(0) {
		return netip.Addr{}, fmt.Errorf("offset %d outside %v (%d addresses)", n, p, Size(p))
	}
	return add(p.Addr(), n), nil
}

// Last returns the last address of p (the IPv4 broadcast address).
func Last(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Offset returns the offset of a inside p, the inverse of Nth.
func Offset(p netip.Prefix, a netip.Addr) (uint64, error) {
	p = p.Masked()
	if !p.Contains(a) {
		return 0, fmt.Errorf("%v is not inside %v", a, p)
	}
	d := new(big.Int).Sub(new(big.Int).SetBytes(a.AsSlice()), new(big.Int).SetBytes(p.Addr().AsSlice()))
	if !d.IsUint64() {
		return 0, fmt.Errorf("offset of %v inside %v exceeds 64 bits", a, p)
	}
	return d.Uint64(), nil
}

// Subnet returns the i-th sub-prefix of length bits inside p, e.g. the
// i-th /30 of a /16. It fails when bits is shorter than p or i is out of
// range.
func Subnet(p netip.Prefix, bits int, i uint64) (netip.Prefix, error) {
	p = p.Masked()
	if bits < p.Bits() || bits > p.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("cannot split %v into /%d", p, bits)
	}
	if n := bits - p.Bits(); n < 64 && i >= uint64(1)<<n {
		return netip.Prefix{}, fmt.Errorf("subnet %d of /%d outside %v (%d subnets)", i, bits, p, uint64(1)<<n)
	}
	shift := uint(p.Addr().BitLen() - bits)
	off := new(big.Int).Lsh(new(big.Int).SetUint64(i), shift)
	a := addBig(p.Addr(), off)
	return netip.PrefixFrom(a, bits), nil
}

// Subnets returns how many prefixes of length bits fit in p, saturated
// at 2^64-1.
func Subnets(p netip.Prefix, bits int) uint64 {
	n := bits - p.Bits()
	if n < 0 {
		return 0
	}
	if n >= 64 {
		return ^uint64(0)
	}
	return uint64(1) << n
}

func add(a netip.Addr, n uint64) netip.Addr {
	return addBig(a, new(big.Int).SetUint64(n))
}

func addBig(a netip.Addr, n *big.Int) netip.Addr {
	v := new(big.Int).Add(new(big.Int).SetBytes(a.AsSlice()), n)
	b := make([]byte, len(a.AsSlice()))
	v.FillBytes(b) // callers keep v inside the family's range
	out, _ := netip.AddrFromSlice(b)
	return out
}

// Mask returns the dotted IPv4 netmask of a prefix length (for the
// kernel's ip= argument and for humans).
func Mask(p netip.Prefix) string {
	if !p.Addr().Is4() {
		return ""
	}
	m := ^uint32(0) << (32 - p.Bits())
	if p.Bits() == 0 {
		m = 0
	}
	return fmt.Sprintf("%d.%d.%d.%d", byte(m>>24), byte(m>>16), byte(m>>8), byte(m))
}
