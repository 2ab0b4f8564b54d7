package mountopt

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  []string
		flags uintptr
		data  string
	}{
		{"flags and data", []string{"ro", "nodev", "size=10m", "rw", "noexec", "mode=0755"}, unix.MS_NODEV | unix.MS_NOEXEC, "size=10m,mode=0755"},
		{"overlay data", []string{"ro", "nosuid", "lowerdir=/a:/b", "rw", "index=off"}, unix.MS_NOSUID, "lowerdir=/a:/b,index=off"},
		{"later wins", []string{"rw", "ro"}, unix.MS_RDONLY, ""},
		{"defaults is no data", []string{"defaults", "lazytime"}, unix.MS_LAZYTIME, ""},
		{"none", nil, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flags, data := Parse(tc.opts)
			if flags != tc.flags || data != tc.data {
				t.Errorf("Parse(%q) = %#x %q, want %#x %q", tc.opts, flags, data, tc.flags, tc.data)
			}
		})
	}
}
