package virtiofs

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/child"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompData encodes struct seccomp_data for x/net/bpf's VM, whose loads
// are big-endian: each 32-bit word the filter loads is written big-endian
// at the offset the kernel reads it from (the low word of an argument
// first, as on a little-endian host).
func seccompData(arch, nr uint32, args ...uint32) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[seccompNR:], nr)
	binary.BigEndian.PutUint32(b[seccompArch:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[seccompArgs+8*i:], a)
	}
	return b
}

func TestFilterProgram(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skipf("the cases use x86-64 system call numbers; GOARCH is %s", runtime.GOARCH)
	}
	raw, err := filterProgram()
	if err != nil {
		t.Fatal(err)
	}
	ins, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("the filter does not disassemble")
	}
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatal(err)
	}
	const x86 = unix.AUDIT_ARCH_X86_64
	const creat, tmpfile = unix.O_CREAT | unix.O_WRONLY, unix.O_TMPFILE | unix.O_RDWR
	for _, tc := range []struct {
		name string
		in   []byte
		deny bool
		// nosys: refused with ENOSYS rather than EPERM.
		nosys bool
	}{
		{"chmod 0755", seccompData(x86, unix.SYS_CHMOD, 0, 0o755), false, false},
		{"chmod 4755", seccompData(x86, unix.SYS_CHMOD, 0, 0o4755), true, false},
		{"fchmod g+s", seccompData(x86, unix.SYS_FCHMOD, 3, 0o2755), true, false},
		{"fchmod 0644", seccompData(x86, unix.SYS_FCHMOD, 3, 0o644), false, false},
		{"fchmodat 4755", seccompData(x86, unix.SYS_FCHMODAT, 3, 0, 0o4755), true, false},
		{"fchmodat sticky", seccompData(x86, unix.SYS_FCHMODAT, 3, 0, 0o1777), false, false},
		{"fchmodat2 2755", seccompData(x86, unix.SYS_FCHMODAT2, 3, 0, 0o2755, 0), true, false},
		{"creat 4755", seccompData(x86, unix.SYS_CREAT, 0, 0o4755), true, false},
		{"openat create 0644", seccompData(x86, unix.SYS_OPENAT, 3, 0, creat, 0o644), false, false},
		{"openat create 4755", seccompData(x86, unix.SYS_OPENAT, 3, 0, creat, 0o4755), true, false},
		{"openat tmpfile 2755", seccompData(x86, unix.SYS_OPENAT, 3, 0, tmpfile, 0o2755), true, false},
		{"openat read ignores mode", seccompData(x86, unix.SYS_OPENAT, 3, 0, unix.O_RDONLY, 0o4755), false, false},
		{"open create 6755", seccompData(x86, unix.SYS_OPEN, 0, creat, 0o6755), true, false},
		{"mknodat block", seccompData(x86, unix.SYS_MKNODAT, 3, 0, unix.S_IFBLK|0o600, 8<<8), true, false},
		{"mknodat char", seccompData(x86, unix.SYS_MKNODAT, 3, 0, unix.S_IFCHR|0o600, 1<<8|3), true, false},
		{"mknod setuid regular", seccompData(x86, unix.SYS_MKNOD, 0, unix.S_IFREG|0o4755, 0), true, false},
		{"mknodat fifo", seccompData(x86, unix.SYS_MKNODAT, 3, 0, unix.S_IFIFO|0o644, 0), false, false},
		{"mknodat socket", seccompData(x86, unix.SYS_MKNODAT, 3, 0, unix.S_IFSOCK|0o644, 0), false, false},
		{"openat2", seccompData(x86, unix.SYS_OPENAT2, 3, 0, 0, 24), true, true},
		{"io_uring_setup", seccompData(x86, unix.SYS_IO_URING_SETUP, 8, 0), true, true},
		{"read", seccompData(x86, unix.SYS_READ, 3, 0, 4096), false, false},
		{"setresuid", seccompData(x86, unix.SYS_SETRESUID, 1000, 1000, 1000), false, false},
		{"i386 abi", seccompData(unix.AUDIT_ARCH_I386, 15, 0, 0o755), true, false},
		{"x32 abi", seccompData(x86, x32SyscallBit|unix.SYS_READ, 3, 0, 1), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := vm.Run(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			want := uint32(retAllow)
			if tc.deny {
				want = retEPERM
			}
			if tc.nosys {
				want = retENOSYS
			}
			if uint32(got) != want {
				t.Errorf("filter returns %#x, want %#x", got, want)
			}
		})
	}
}

// TestFilterInChild runs a shell under the filter as virtiofsd runs, and
// checks on disk that it made neither a device node nor a set-user-ID or
// set-group-ID file, while ordinary files, modes and FIFOs work.
func TestFilterInChild(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("test needs root (mknod of a device), required when CI is set")
		}
		t.Skip("test needs root (mknod of a device)")
	}
	raw, err := filterProgram()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := `cd "$1" || exit 9
echo data > plain && chmod 0644 plain
cp /bin/true exe && chmod 0755 exe
cp /bin/true suid && chmod 4755 suid
cp /bin/true sgid && chmod g+s sgid
mknod blk b 8 0
mknod chr c 1 3
mkfifo fifo
install -m 4755 /bin/true installed
exit 0`
	cmd := exec.Command("/bin/sh", "-c", script, "sh", dir)
	out := &child.TailBuffer{Max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	done := make(chan *os.ProcessState, 1)
	if err := child.StartPrepared(cmd, func() error { return installFilter(raw) }, func(ps *os.ProcessState, _ error) { done <- ps }); err != nil {
		t.Fatal(err)
	}
	select {
	case ps := <-done:
		if ps.ExitCode() != 0 {
			t.Fatalf("script exited %d: %s", ps.ExitCode(), out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("script did not finish")
	}
	t.Logf("script output:\n%s", out)
	for name, want := range map[string]os.FileMode{
		"plain": 0o644, "exe": 0o755, "suid": 0o755, "sgid": 0o755,
		"fifo": os.ModeNamedPipe | 0o644,
	} {
		st, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := st.Mode() &^ 0o022 & (os.ModeType | os.ModeSetuid | os.ModeSetgid | os.ModePerm); got != want&^0o022 {
			t.Errorf("%s has mode %v, want %v", name, st.Mode(), want)
		}
	}
	for _, name := range []string{"blk", "chr"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			t.Errorf("device node %s was created", name)
		}
	}
	if st, err := os.Lstat(filepath.Join(dir, "installed")); err == nil && st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
		t.Errorf("installed has mode %v", st.Mode())
	}
	// The filtered thread went with the child: this process still may.
	p := filepath.Join(dir, "parent")
	if err := os.WriteFile(p, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if err := os.Chmod(p, 0o4755); err != nil {
			t.Fatalf("chmod 4755 in the test process: %v", err)
		}
	}
}
