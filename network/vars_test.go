package network_test

import "net/netip"

var netipZero netip.Addr
