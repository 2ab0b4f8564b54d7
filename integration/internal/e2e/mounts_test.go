package e2e

import (
	"slices"
	"testing"
)

func TestMountsUnder(t *testing.T) {
	tests := []struct {
		name, dir string
		want      string // a mount point that must be listed, "" for none
		notWant   string // one that must not be
	}{
		{name: "the directory itself", dir: "/proc", want: "/proc"},
		{name: "a trailing slash", dir: "/proc/", want: "/proc"},
		{name: "below it", dir: "/", want: "/proc"},
		{name: "a sibling with the prefix is not below", dir: "/pro", notWant: "/proc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MountsUnder(tt.dir)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want != "" && !slices.Contains(got, tt.want) {
				t.Errorf("MountsUnder(%q) = %v, want %s in it", tt.dir, got, tt.want)
			}
			if tt.notWant != "" && slices.Contains(got, tt.notWant) {
				t.Errorf("MountsUnder(%q) = %v, want no %s", tt.dir, got, tt.notWant)
			}
		})
	}
}

func TestMountPointsUnder(t *testing.T) {
	const (
		root   = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
		space  = "90 22 0:50 / /tmp/d/a\\040b rw - tmpfs tmpfs rw\n"
		bslash = "91 22 0:51 / /tmp/d/c\\134d\\011e rw - tmpfs tmpfs rw\n"
		other  = "92 22 0:52 / /tmp/dd rw - tmpfs tmpfs rw\n"
	)
	tests := []struct {
		name, in, dir string
		want          []string
		wantErr       bool
	}{
		{name: "escaped space", in: root + space + other, dir: "/tmp/d", want: []string{"/tmp/d/a b"}},
		{name: "escaped backslash and tab", in: root + bslash, dir: "/tmp/d", want: []string{"/tmp/d/c\\d\te"}},
		{name: "nothing below", in: root + other, dir: "/tmp/d"},
		{name: "a short line is an error, not no mounts", in: root + "90 22 0:50 /\n" + space, dir: "/tmp/d", wantErr: true},
		{name: "no separator is an error", in: root + "90 22 0:50 / /tmp/d/x rw tmpfs tmpfs rw\n", dir: "/tmp/d", wantErr: true},
		{name: "a cut escape is an error", in: "90 22 0:50 / /tmp/d/a\\04 rw - tmpfs tmpfs rw\n", dir: "/tmp/d", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mountPointsUnder([]byte(tt.in), tt.dir)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("mountPointsUnder = %q, want an error", got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("mountPointsUnder = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
