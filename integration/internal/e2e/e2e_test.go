package e2e

import (
	"os"
	"testing"
)

func TestLastLines(t *testing.T) {
	tests := []struct {
		name, in string
		n        int
		want     string
	}{
		{name: "fewer lines than n", in: "a\nb\n", n: 3, want: "a\nb"},
		{name: "the last n", in: "a\nb\nc\n", n: 2, want: "b\nc"},
		{name: "no final newline", in: "a\nb\nc", n: 1, want: "c"},
		{name: "empty", in: "", n: 2, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := LastLines(tt.in, tt.n); got != tt.want {
				t.Errorf("LastLines(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
			}
		})
	}
}

func TestSmapsRollup(t *testing.T) {
	rss, pss := SmapsRollup(os.Getpid())
	if rss == 0 || pss == 0 || pss > rss {
		t.Errorf("the test's own Rss %d KiB, Pss %d KiB; want both set, Pss at most Rss", rss, pss)
	}
	if rss > 16<<20 {
		t.Errorf("Rss %d KiB: not in KiB", rss)
	}
	if rss, pss := SmapsRollup(-1); rss != 0 || pss != 0 {
		t.Errorf("no process: %d, %d; want zeros", rss, pss)
	}
}
