package hypervisor

import (
	"strings"
	"testing"
)

func TestValidDiskSerial(t *testing.T) {
	cases := []struct {
		name, serial string
		want         bool
	}{
		{"plain", "hullroot1", true},
		{"dash and underscore", "s-a_b", true},
		{"twenty bytes", strings.Repeat("s", 20), true},
		{"empty", "", false},
		{"twenty-one bytes", strings.Repeat("s", 21), false},
		{"a slash", "../vda", false},
		{"a space", "has space", false},
		{"a newline", "a\n", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ValidDiskSerial(c.serial); got != c.want {
				t.Fatalf("ValidDiskSerial(%q) = %v, want %v", c.serial, got, c.want)
			}
		})
	}
}
