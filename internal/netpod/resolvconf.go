package netpod

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	agent "github.com/hull-runtime/hull/api/agent/v1"
)

// maxResolvConf bounds how much of a resolv.conf is read.
const maxResolvConf = 64 << 10

// ParseResolvConf reads the resolv.conf at path (containerd's per-pod
// file) into what the guest's resolv.conf is to hold. A missing file is
// errdefs.ErrNotFound.
func ParseResolvConf(path string) (*agent.DNS, error) {
	// The path comes from a bundle's spec: never block on a FIFO, never
	// follow a last-component symlink, read a regular file of sane size.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reading resolv.conf: %w", classify(err))
	}
	defer func() { _ = f.Close() }()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	dns, err := parseResolvConf(io.LimitReader(f, maxResolvConf))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return dns, nil
}

// parseResolvConf follows resolv.conf(5) as glibc reads it: comment lines
// start with '#' or ';'; each "nameserver" line adds an address (one that
// does not parse is ignored); the last "search" or "domain" line sets the
// search list; "options" lines add up.
func parseResolvConf(r io.Reader) (*agent.DNS, error) {
	dns := &agent.DNS{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		args := fields[1:]
		switch fields[0] {
		case "nameserver":
			if len(args) == 0 {
				continue
			}
			if _, err := netip.ParseAddr(args[0]); err == nil {
				dns.Servers = append(dns.Servers, args[0])
			}
		case "search", "domain":
			if len(args) == 0 {
				continue
			}
			if fields[0] == "domain" {
				args = args[:1]
			}
			dns.Searches = append([]string(nil), args...)
		case "options":
			dns.Options = append(dns.Options, args...)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return dns, nil
}
