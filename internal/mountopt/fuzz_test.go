package mountopt

import (
	"strings"
	"testing"
)

// FuzzParse splits untrusted mount options (from a container's spec): the
// flags are only those the options name, the last of "ro"/"rw" wins, and
// no flag option leaks into the file system's data, also when one element
// holds several options ("size=1,nosuid": the fuzzer found such an element
// kept its nosuid out of the flags).
func FuzzParse(f *testing.F) {
	var all uintptr
	for _, fl := range flags {
		all |= fl.flag
	}
	f.Fuzz(func(t *testing.T, opts string) {
		// Elements are split on ";": one element may hold several
		// comma-separated options, as in mount(8) -o.
		list := strings.Split(opts, ";")
		set, data := Parse(list)
		if set&^all != 0 {
			t.Fatalf("flags %#x outside the known ones for %q", set, opts)
		}
		for _, d := range strings.Split(data, ",") {
			if _, ok := flags[d]; ok {
				t.Fatalf("flag option %q in the data %q", d, data)
			}
		}
		last := ""
		for _, o := range strings.Split(strings.Join(list, ","), ",") {
			if o == "ro" || o == "rw" {
				last = o
			}
		}
		if ro := set&flags["ro"].flag != 0; (last == "ro") != ro {
			t.Fatalf("options %q: read-only %v", opts, ro)
		}
	})
}
