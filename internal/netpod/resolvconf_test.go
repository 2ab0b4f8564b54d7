package netpod

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	agent "github.com/hull-runtime/hull/api/agent/v1"
)

func TestParseResolvConf(t *testing.T) {
	for _, c := range []struct {
		name string
		in   string
		want *agent.DNS
	}{
		{"empty", "", &agent.DNS{}},
		{
			"kubelet cluster first",
			"search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
			&agent.DNS{
				Servers:  []string{"10.96.0.10"},
				Searches: []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"},
				Options:  []string{"ndots:5"},
			},
		},
		{
			"comments, blanks, tabs, several lines",
			"# generated\n; also a comment\n\nnameserver\t198.18.0.53\nnameserver fd00::53\nnameserver fe80::1%eth0\n" +
				"options ndots:2 timeout:1\noptions rotate\n  \nsortlist 130.155.160.0/255.255.240.0\n",
			&agent.DNS{
				Servers: []string{"198.18.0.53", "fd00::53", "fe80::1%eth0"},
				Options: []string{"ndots:2", "timeout:1", "rotate"},
			},
		},
		{
			"last search or domain wins",
			"search a.example b.example\ndomain c.example extra\n",
			&agent.DNS{Searches: []string{"c.example"}},
		},
		{
			"domain then search",
			"domain c.example\nsearch a.example b.example\n",
			&agent.DNS{Searches: []string{"a.example", "b.example"}},
		},
		{
			"bad and empty entries ignored",
			"nameserver\nnameserver not-an-address\nnameserver 198.18.0.53 trailing\nsearch\noptions\nnameserverx 1.2.3.4\n",
			&agent.DNS{Servers: []string{"198.18.0.53"}},
		},
		{"no final newline", "nameserver 198.18.0.53", &agent.DNS{Servers: []string{"198.18.0.53"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(c.in), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ParseResolvConf(path)
			if err != nil {
				t.Fatalf("ParseResolvConf: %v", err)
			}
			if !proto.Equal(got, c.want) {
				t.Errorf("got %s, want %s", prototext.Format(got), prototext.Format(c.want))
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		_, err := ParseResolvConf(filepath.Join(t.TempDir(), "resolv.conf"))
		if !errdefs.IsNotFound(err) {
			t.Errorf("ParseResolvConf of a missing file: %v, want not found", err)
		}
	})
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add("search a b\nnameserver 10.96.0.10\noptions ndots:5\n")
	f.Add("domain x\n# c\n;c\nnameserver ::1\n")
	f.Fuzz(func(t *testing.T, in string) {
		dns, err := parseResolvConf(strings.NewReader(in))
		if err != nil {
			return // a line longer than bufio's limit
		}
		for _, s := range append(append(append([]string{}, dns.Servers...), dns.Searches...), dns.Options...) {
			if s == "" || strings.ContainsAny(s, " \t\n") {
				t.Fatalf("entry %q from %q", s, in)
			}
		}
	})
}

func TestParseResolvConfRefusesOddFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(real, []byte("nameserver 198.18.0.53\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ParseResolvConf(fifo); done <- err }()
	select {
	case err := <-done:
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("a FIFO: %v, want an invalid argument", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading a FIFO blocked")
	}
	if _, err := ParseResolvConf(link); err == nil {
		t.Error("a symlink was followed")
	}
	if dns, err := ParseResolvConf(real); err != nil || len(dns.GetServers()) != 1 {
		t.Errorf("the real file: %v, %v", dns, err)
	}
}
