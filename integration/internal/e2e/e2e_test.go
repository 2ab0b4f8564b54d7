package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
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

// errRecorder is a testing.TB that keeps what Errorf reports.
type errRecorder struct {
	testing.TB
	errs []string
}

func (r *errRecorder) Helper() {}

func (r *errRecorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestCheckClean(t *testing.T) {
	t.Run("something stays: one error naming it", func(t *testing.T) {
		r := &errRecorder{TB: t}
		CheckClean(r, 0, func() []string { return []string{"mount /x"} })
		if len(r.errs) != 1 || !strings.Contains(r.errs[0], "mount /x") {
			t.Errorf("errors %q, want one naming mount /x", r.errs)
		}
	})
	t.Run("gone within the wait: no error", func(t *testing.T) {
		r := &errRecorder{TB: t}
		calls := 0
		CheckClean(r, time.Minute, func() []string {
			if calls++; calls < 3 {
				return []string{"process 1"}
			}
			return nil
		})
		if len(r.errs) != 0 || calls != 3 {
			t.Errorf("errors %q after %d calls, want none after 3", r.errs, calls)
		}
	})
}
