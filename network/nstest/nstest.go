// Package nstest builds throwaway network worlds for root tests and
// benchmarks: namespaces pinned under the test's temp dir, veth links
// between them, stand-in guests attached to a VM's TAP, and responders.
// Everything it creates is removed by t.Cleanup, also when the test
// fails, and traffic only ever flows between namespaces it made.
//
// A stand-in guest works the way a VMM does: it opens the VM's TAP
// through /dev/net/tun and relays frames between it and a TAP of its own
// inside a separate "guest" namespace, where the guest's address, MAC
// and default route are configured from the Attachment. So packets enter
// the host side exactly where a real VM's would.
package nstest

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/network"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, links and firewall rules (inside namespaces the test makes)")
	}
}

// NS is a namespace the test created.
type NS struct {
	Name   string
	Path   string
	Handle netns.NsHandle
	NL     *netlink.Handle
}

// New creates namespace name under dir and removes it at cleanup.
func New(t testing.TB, dir, name string) *NS {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := network.CreateNS(p); err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	h, err := netns.GetFromPath(p)
	if err != nil {
		network.DeleteNS(p)
		t.Fatalf("open netns %s: %v", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		network.DeleteNS(p)
		t.Fatalf("netlink in %s: %v", name, err)
	}
	ns := &NS{Name: name, Path: p, Handle: h, NL: nl}
	t.Cleanup(func() {
		nl.Close()
		h.Close()
		if err := network.DeleteNS(p); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	if lo, err := nl.LinkByName("lo"); err == nil {
		_ = nl.LinkSetUp(lo)
	}
	return ns
}

// Run runs fn inside the namespace.
func (ns *NS) Run(fn func() error) error { return network.InNS(ns.Handle, fn) }

// Link returns a link by name or fails the test.
func (ns *NS) Link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := ns.NL.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: link %s: %v", ns.Name, name, err)
	}
	return l
}

// AddAddr adds an address to a link and brings it up.
func (ns *NS) AddAddr(t testing.TB, link string, p netip.Prefix) {
	t.Helper()
	l := ns.Link(t, link)
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if err := ns.NL.AddrAdd(l, a); err != nil {
		t.Fatalf("%s: addr %v on %s: %v", ns.Name, p, link, err)
	}
	if err := ns.NL.LinkSetUp(l); err != nil {
		t.Fatalf("%s: up %s: %v", ns.Name, link, err)
	}
}

// DefaultRoute routes everything via gw.
func (ns *NS) DefaultRoute(t testing.TB, gw netip.Addr) {
	t.Helper()
	if err := ns.NL.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
		t.Fatalf("%s: default route via %v: %v", ns.Name, gw, err)
	}
}

// Veth joins a and b by a veth pair named aName/bName with the given
// addresses (an invalid prefix leaves that end unaddressed but up).
func Veth(t testing.TB, a *NS, aName string, aAddr netip.Prefix, b *NS, bName string, bAddr netip.Prefix) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(int(b.Handle))}
	if err := a.NL.LinkAdd(v); err != nil {
		t.Fatalf("veth %s/%s: %v", aName, bName, err)
	}
	for _, e := range []struct {
		ns   *NS
		name string
		p    netip.Prefix
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if e.p.IsValid() {
			e.ns.AddAddr(t, e.name, e.p)
		} else if err := e.ns.NL.LinkSetUp(e.ns.Link(t, e.name)); err != nil {
			t.Fatal(err)
		}
	}
}

// Addresses of the world's internet and the services on it.
var (
	HostEgress  = netip.MustParsePrefix("198.18.0.1/24")
	InetUplink  = netip.MustParsePrefix("198.18.0.2/24")
	Resolver    = netip.MustParseAddr("198.18.0.53")
	Allowed     = netip.MustParseAddr("198.18.1.10")
	Denied      = netip.MustParseAddr("198.18.1.20")
	Metadata    = netip.MustParseAddr("169.254.169.254")
	EgressIface = "egress0"
)

// World is a host namespace with an egress link to an "internet"
// namespace that serves TCP on ports 80 and 443 and a UDP echo on 53 at
// every address above.
type World struct {
	Dir  string
	Host *NS
	Inet *NS
}

// NewWorld builds a World; all of it goes at cleanup.
func NewWorld(t testing.TB) *World {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	w := &World{Dir: dir, Host: New(t, dir, "host"), Inet: New(t, dir, "inet")}
	Veth(t, w.Host, EgressIface, HostEgress, w.Inet, "uplink", InetUplink)
	w.Host.DefaultRoute(t, InetUplink.Addr())
	for _, a := range []netip.Addr{Resolver, Allowed, Denied, Metadata} {
		w.Inet.AddAddr(t, "lo", netip.PrefixFrom(a, 32))
	}
	for _, port := range []string{"80", "443"} {
		ServeTCP(t, w.Inet, "0.0.0.0:"+port)
	}
	// Bound per address: a wildcard UDP socket would answer from
	// whatever source the route picks, not the address asked.
	ServeUDP(t, w.Inet, Resolver.String()+":53")
	ServeUDP(t, w.Inet, Allowed.String()+":53")
	return w
}

// ServeTCP answers every connection with "ok <local addr>\n" and closes.
func ServeTCP(t testing.TB, ns *NS, addr string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Run(func() (err error) { ln, err = net.Listen("tcp4", addr); return }); err != nil {
		t.Fatalf("%s: listen %s: %v", ns.Name, addr, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, "ok "+c.RemoteAddr().String()+"\n")
			}()
		}
	}()
}

// ServeUDP echoes every datagram back prefixed with "ok ".
func ServeUDP(t testing.TB, ns *NS, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Run(func() (err error) { pc, err = net.ListenPacket("udp4", addr); return }); err != nil {
		t.Fatalf("%s: listen udp %s: %v", ns.Name, addr, err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("ok "), buf[:n]...), from)
		}
	}()
}

// DialTCP connects from ns to addr (optionally from local) and reads the
// responder's greeting; it returns the greeting or an error.
func (ns *NS) DialTCP(addr string, local netip.Addr, timeout time.Duration) (string, error) {
	var c net.Conn
	err := ns.Run(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if local.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		c, err = d.Dial("tcp4", addr)
		return
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	if !strings.HasPrefix(string(b), "ok ") {
		return string(b), errors.New("unexpected greeting")
	}
	return string(b), nil
}

// QueryUDP sends msg from ns to addr and waits for the echo.
func (ns *NS) QueryUDP(addr, msg string, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := ns.Run(func() (err error) { c, err = net.Dial("udp4", addr); return }); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// Guest stands in for a VM on a TAP: see the package doc.
type Guest struct {
	NS   *NS
	tap  *os.File
	eth  *os.File
	wg   sync.WaitGroup
	once sync.Once
}

// GuestIface is the guest's interface name.
const GuestIface = "eth0"

// AttachGuest opens tapName inside vmNS as a VMM would and wires a new
// guest namespace to it, configured from the attachment's fields.
func AttachGuest(t testing.TB, dir string, name string, vmNS netns.NsHandle, tapName string, mac net.HardwareAddr, addr netip.Prefix, gw netip.Addr) *Guest {
	t.Helper()
	g := &Guest{NS: New(t, dir, name)}
	var err error
	if err = network.InNS(vmNS, func() (err error) { g.tap, err = openTAP(tapName); return }); err != nil {
		t.Fatalf("open vm tap %s: %v", tapName, err)
	}
	if err = g.NS.Run(func() (err error) { g.eth, err = openTAP(GuestIface); return }); err != nil {
		g.tap.Close()
		t.Fatalf("create guest tap: %v", err)
	}
	t.Cleanup(g.Close)
	l := g.NS.Link(t, GuestIface)
	if err := g.NS.NL.LinkSetHardwareAddr(l, mac); err != nil {
		t.Fatalf("guest mac: %v", err)
	}
	// No IPv6 in the stand-in, so its router solicitations do not count
	// as guest traffic.
	_ = g.NS.Run(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0o644)
	})
	g.NS.AddAddr(t, GuestIface, addr)
	g.NS.DefaultRoute(t, gw)
	g.wg.Add(2)
	go g.pump(g.tap, g.eth)
	go g.pump(g.eth, g.tap)
	return g
}

func (g *Guest) pump(from, to *os.File) {
	defer g.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := from.Read(buf)
		if err != nil {
			return
		}
		if _, err := to.Write(buf[:n]); err != nil && errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// Close detaches the guest from the TAP (as a VMM exiting would).
func (g *Guest) Close() {
	g.once.Do(func() {
		g.tap.Close()
		g.eth.Close()
		g.wg.Wait()
	})
}

// SetMAC changes the guest's MAC (to test anti-spoofing).
func (g *Guest) SetMAC(t testing.TB, mac net.HardwareAddr) {
	t.Helper()
	if err := g.NS.NL.LinkSetHardwareAddr(g.NS.Link(t, GuestIface), mac); err != nil {
		t.Fatal(err)
	}
}

func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Eventually retries fn until it succeeds or the deadline passes.
func Eventually(d time.Duration, fn func() error) error {
	end := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(end) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
