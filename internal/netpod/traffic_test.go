package netpod

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestMirrorTraffic plays the guest on the tap descriptor and the host on
// the other end of eth0 (peer0, in the peer namespace) and checks that
// frames cross the mirror both ways.
func TestMirrorTraffic(t *testing.T) {
	const timeout = 5 * time.Second
	var (
		podIP  = netip.MustParseAddr("198.18.0.2")
		peerIP = netip.MustParseAddr("198.18.0.1")
	)
	p := newPod(t)
	n := attach(t, p.ns.path)
	devs := n.Devices()
	if len(devs) == 0 || devs[0].ID != "eth0" {
		t.Fatalf("devices %+v, want eth0 first", devs)
	}
	tap := devs[0].FDs[0]

	// A UDP socket of the host side, in the peer namespace.
	var conn *net.UDPConn
	if err := inNamespace(p.peer.open(t), func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(peerIP, 0)))
		return err
	}); err != nil {
		t.Fatalf("listening in the peer namespace: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	peerPort := netip.MustParseAddrPort(conn.LocalAddr().String()).Port()

	// Host to guest. The peer first resolves the pod's address: its ARP
	// request must come out of the tap, not be answered by the pod
	// namespace's own stack.
	toGuest := []byte("hull: host to guest")
	if _, err := conn.WriteToUDPAddrPort(toGuest, netip.AddrPortFrom(podIP, 4242)); err != nil {
		t.Fatalf("sending from the peer: %v", err)
	}
	readFrame(t, tap, timeout, "ARP request for "+podIP.String(), func(f []byte) bool {
		op, spa, tpa, ok := parseARP(f)
		return ok && op == 1 && spa == peerIP && tpa == podIP && bytes.Equal(f[6:12], peerMAC)
	})

	// Guest to host: our ARP reply, written into the tap, reaches the
	// peer, which then sends the datagram it held.
	writeFrame(t, tap, arpFrame(2, podMAC, podIP, peerMAC, peerIP))
	readFrame(t, tap, timeout, "UDP datagram to "+podIP.String(), func(f []byte) bool {
		src, dst, payload, ok := parseUDP(f)
		return ok && bytes.Equal(f[0:6], podMAC) && src.Addr() == peerIP && dst == netip.AddrPortFrom(podIP, 4242) && bytes.Equal(payload, toGuest)
	})

	// Guest to host: a UDP datagram written into the tap reaches the
	// peer's socket.
	toHost := []byte("hull: guest to host")
	from := netip.AddrPortFrom(podIP, 4343)
	writeFrame(t, tap, udpFrame(podMAC, peerMAC, from, netip.AddrPortFrom(peerIP, peerPort), toHost))
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	nr, got, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("the peer received nothing from the guest: %v", err)
	}
	if got := netip.AddrPortFrom(got.Addr().Unmap(), got.Port()); got != from || !bytes.Equal(buf[:nr], toHost) {
		t.Fatalf("the peer received %q from %v, want %q from %v", buf[:nr], got, toHost, from)
	}
}

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
)

func ethernet(dst, src net.HardwareAddr, etherType uint16) []byte {
	b := append(append([]byte{}, dst...), src...)
	return binary.BigEndian.AppendUint16(b, etherType)
}

// arpFrame is an Ethernet ARP packet for IPv4; a reply (op 2) is sent to
// tha.
func arpFrame(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := ethernet(tha, sha, etherTypeARP)
	b = binary.BigEndian.AppendUint16(b, 1) // Ethernet
	b = binary.BigEndian.AppendUint16(b, etherTypeIPv4)
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(append(b, sha...), spa.AsSlice()...)
	return append(append(b, tha...), tpa.AsSlice()...)
}

// parseARP returns the operation and the sender and target addresses of an
// Ethernet ARP packet for IPv4.
func parseARP(f []byte) (op uint16, spa, tpa netip.Addr, ok bool) {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:14]) != etherTypeARP {
		return 0, netip.Addr{}, netip.Addr{}, false
	}
	a := f[14:]
	if binary.BigEndian.Uint16(a[2:4]) != etherTypeIPv4 || a[4] != 6 || a[5] != 4 {
		return 0, netip.Addr{}, netip.Addr{}, false
	}
	spa, _ = netip.AddrFromSlice(a[14:18])
	tpa, _ = netip.AddrFromSlice(a[24:28])
	return binary.BigEndian.Uint16(a[6:8]), spa, tpa, true
}

// udpFrame is an Ethernet IPv4 UDP datagram (UDP checksum left out, as
// IPv4 allows).
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	ip := make([]byte, 20, 20+8+len(payload))
	ip[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // don't fragment
	ip[8] = 64                                 // TTL
	ip[9] = 17                                 // UDP
	copy(ip[12:16], src.Addr().AsSlice())
	copy(ip[16:20], dst.Addr().AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	ip = binary.BigEndian.AppendUint16(ip, src.Port())
	ip = binary.BigEndian.AppendUint16(ip, dst.Port())
	ip = binary.BigEndian.AppendUint16(ip, uint16(8+len(payload)))
	ip = binary.BigEndian.AppendUint16(ip, 0)
	return append(ethernet(dstMAC, srcMAC, etherTypeIPv4), append(ip, payload...)...)
}

// parseUDP returns the addresses and payload of an Ethernet IPv4 UDP
// datagram.
func parseUDP(f []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:14]) != etherTypeIPv4 {
		return src, dst, nil, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ip[0]>>4 != 4 || ip[9] != 17 || ihl < 20 || total > len(ip) || total < ihl+8 {
		return src, dst, nil, false
	}
	s, _ := netip.AddrFromSlice(ip[12:16])
	d, _ := netip.AddrFromSlice(ip[16:20])
	udp := ip[ihl:total]
	src = netip.AddrPortFrom(s, binary.BigEndian.Uint16(udp[0:2]))
	dst = netip.AddrPortFrom(d, binary.BigEndian.Uint16(udp[2:4]))
	return src, dst, udp[8:], true
}
