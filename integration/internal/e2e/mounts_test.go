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
			got := MountsUnder(tt.dir)
			if tt.want != "" && !slices.Contains(got, tt.want) {
				t.Errorf("MountsUnder(%q) = %v, want %s in it", tt.dir, got, tt.want)
			}
			if tt.notWant != "" && slices.Contains(got, tt.notWant) {
				t.Errorf("MountsUnder(%q) = %v, want no %s", tt.dir, got, tt.notWant)
			}
		})
	}
}
