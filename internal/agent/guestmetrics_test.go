package agent

import (
	"testing"
)

func TestParseGuestMetrics(t *testing.T) {
	t.Run("meminfo", func(t *testing.T) {
		m := parseGuestMemory([]byte("MemTotal:        1000 kB\nMemFree:  200 kB\nMemAvailable: 500 kB\nCached: 7 kB\nSwapTotal: 0 kB\nbogus line\n"))
		if m.TotalBytes != 1000<<10 || m.FreeBytes != 200<<10 || m.AvailableBytes != 500<<10 || m.CachedBytes != 7<<10 {
			t.Errorf("got %+v", m)
		}
	})
	t.Run("stat", func(t *testing.T) {
		c := parseGuestCPU([]byte("cpu  10 1 20 300 4 0 2 0 0 0\ncpu0 10 1 20 300 4 0 2 0 0 0\nintr 1\n"))
		if c.UserUsec != 100_000 || c.SystemUsec != 200_000 || c.IdleUsec != 3_000_000 || c.SoftirqUsec != 20_000 {
			t.Errorf("got %+v", c)
		}
	})
	t.Run("loadavg", func(t *testing.T) {
		l := parseGuestLoad([]byte("0.50 0.25 0.10 2/81 123\n"))
		if l.Load1 != 0.5 || l.Load15 != 0.1 || l.Running != 2 || l.Total != 81 {
			t.Errorf("got %+v", l)
		}
		if l := parseGuestLoad([]byte("garbage")); l.Load1 != 0 {
			t.Errorf("garbage: got %+v", l)
		}
	})
	t.Run("net/dev", func(t *testing.T) {
		b := []byte("Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  eth0: 100 2 3 4 0 0 0 0 200 5 6 7 0 0 0 0\n")
		got := parseNetDev(b)
		if len(got) != 1 || got[0].Name != "eth0" || got[0].RxBytes != 100 || got[0].TxBytes != 200 || got[0].TxDropped != 7 {
			t.Errorf("got %v", got)
		}
	})
	t.Run("net/dev bounded", func(t *testing.T) {
		var b []byte
		for range 1000 {
			b = append(b, "  x: 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1\n"...)
		}
		if got := parseNetDev(b); len(got) != maxMetricsDevices {
			t.Errorf("%d interfaces, want the bound %d", len(got), maxMetricsDevices)
		}
	})
	t.Run("diskstats", func(t *testing.T) {
		b := []byte("   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0\n 254 0 vdz 10 0 8 3 20 0 16 5 0 7 8\n 254 16 vdy 0 0 0 0 0 0 0 0 0 0 0\n")
		got := parseDiskstats(b)
		if len(got) != 1 || got[0].Name != "vdz" || got[0].Reads != 10 || got[0].ReadBytes != 8*512 || got[0].WrittenBytes != 16*512 || got[0].IoTimeMs != 7 {
			t.Errorf("got %v", got)
		}
	})
}
