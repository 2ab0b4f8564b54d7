package agentclient

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// TestAgentInQEMU boots the real agent as PID 1 in QEMU (q35, TCG) and
// drives it over virtio-serial. It is run by hand until the integration
// suite exists:
//
//	testdata/mkinitrd.sh /tmp/kpkg/root/lib/modules/6.1.0-56-cloud-amd64 /tmp/x/initrd.cpio
//	HULL_TEST_KERNEL=/tmp/kpkg/root/boot/vmlinuz-6.1.0-56-cloud-amd64 \
//	HULL_TEST_INITRD=/tmp/x/initrd.cpio go test -v -run TestAgentInQEMU ./internal/agentclient/
//
// HULL_TEST_IDLE (a duration, default 10s) sets how long the agent's idle
// CPU is measured.
func TestAgentInQEMU(t *testing.T) {
	kernel, initrd := os.Getenv("HULL_TEST_KERNEL"), os.Getenv("HULL_TEST_INITRD")
	if kernel == "" || initrd == "" {
		t.Skip("set HULL_TEST_KERNEL and HULL_TEST_INITRD to boot the agent in QEMU (see testdata/mkinitrd.sh)")
	}
	idle := 10 * time.Second
	if v := os.Getenv("HULL_TEST_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("HULL_TEST_IDLE: %v", err)
		}
		idle = d
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	consoleLog := filepath.Join(dir, "console.log")
	ep := hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: sock, PortName: DefaultSerialPortName}
	params := append([]string{"console=ttyS0", "quiet", "panic=-1", "tsc_early_khz=2445432", "tsc=reliable",
		"cryptomgr.notests", "no_timer_check", "rcupdate.rcu_expedited=1"}, KernelParams(ep, "debug")...)
	cmd := exec.Command("qemu-system-x86_64",
		"-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", strings.Join(params, " "),
		"-chardev", "file,id=con,path="+consoleLog, "-serial", "chardev:con",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+DefaultSerialPortName,
	)
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if b, err := os.ReadFile(consoleLog); err == nil {
			t.Logf("console:\n%s", b)
		}
	})

	ctx := context.Background()
	var logs captureLog
	c, err := Dial(ctx, ep, Options{DialTimeout: 60 * time.Second, CallTimeout: 10 * time.Second, Abort: exited, Log: logs.entry()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("qemu start -> first Health answer: %s", time.Since(start).Round(time.Millisecond))

	d, err := c.System().GuestDetails(ctx, &api.GuestDetailsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %s, %d cpus, %d MiB (%d MiB available), transport %s, boot to serve %s",
		d.GetKernelRelease(), d.GetCpus(), d.GetMemoryTotalBytes()>>20, d.GetMemoryAvailableBytes()>>20,
		d.GetTransport(), d.GetBootToServe().AsDuration())
	if d.GetTransport() != "serial:agent.0" {
		t.Errorf("transport = %q", d.GetTransport())
	}

	// Wait for the modules the transport does not need.
	for deadline := time.Now().Add(30 * time.Second); ; {
		h, err := c.System().Health(ctx, &api.HealthRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if h.GetStatus() == api.HealthResponse_STATUS_SERVING {
			t.Logf("serving %s after qemu start, guest uptime %s", time.Since(start).Round(time.Millisecond), h.GetUptime().AsDuration())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health still %s", h.GetStatus())
		}
		time.Sleep(50 * time.Millisecond)
	}
	d, err = c.System().GuestDetails(ctx, &api.GuestDetailsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("modules %q, features %q, warnings %q", d.GetModules(), d.GetFeatures(), d.GetWarnings())
	if len(d.GetWarnings()) > 0 {
		t.Errorf("warnings: %q", d.GetWarnings())
	}
	logs.find(t, "agent serving")
	logs.find(t, "module loaded")

	// Idle CPU of the whole VM while the host stays connected.
	before := cpuTime(t, cmd.Process.Pid)
	time.Sleep(idle)
	used := cpuTime(t, cmd.Process.Pid) - before
	t.Logf("qemu CPU while connected and idle: %s in %s (%.1f%%)", used, idle, 100*used.Seconds()/idle.Seconds())

	want := time.Now().Add(time.Hour).Truncate(time.Second)
	st, err := c.System().SetTime(ctx, &api.SetTimeRequest{Time: timestamppb.New(want)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest clock was %s", st.GetPrevious().AsTime())

	// A new connection after the old one went away: the agent waits for
	// the host again and serves a new session.
	c.Close()
	c, err = Dial(ctx, ep, Options{DialTimeout: 20 * time.Second, Abort: exited, NoLogStream: true})
	if err != nil {
		t.Fatalf("redial: %v", err)
	}
	defer c.Close()
	h, err := c.System().Health(ctx, &api.HealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after redial, guest uptime %s", h.GetUptime().AsDuration())

	shutdownAt := time.Now()
	if _, err := c.System().Shutdown(ctx, &api.ShutdownRequest{Grace: durationpb.New(time.Second)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		t.Logf("qemu exited %s after Shutdown: %v", time.Since(shutdownAt).Round(time.Millisecond), cmd.ProcessState)
	case <-time.After(30 * time.Second):
		t.Fatal("qemu still running 30s after Shutdown")
	}
}

// cpuTime is the user+system CPU time of a process so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	// Fields after the command name start at field 3 (state); utime and
	// stime are fields 14 and 15, in clock ticks (100 Hz).
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}
