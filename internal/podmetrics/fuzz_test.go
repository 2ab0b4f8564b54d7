package podmetrics

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzLabels: any guest or pod string gives a bounded, valid label value
// without control characters (device names: only the allowed bytes).
func FuzzLabels(f *testing.F) {
	for _, s := range []string{"eth0", "a\nb", strings.Repeat("é", 300), "\xff\xfe", "x\u2028y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := deviceLabel(s)
		if len(d) > maxDeviceLabel || strings.Trim(d, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-") != "" {
			t.Errorf("device label %q from %q", d, s)
		}
		p := podLabel(s)
		if len(p) > maxPodLabel || !utf8.ValidString(p) || strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) }) {
			t.Errorf("pod label %q from %q", p, s)
		}
	})
}
