package procfs

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"
)

func TestStatFields(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string // nil: an error
	}{
		{name: "plain", in: "42 (sleep) Z 1 40 39\n", want: []string{"Z", "1", "40", "39"}},
		{name: "parentheses and spaces in the name", in: "7 (a) b (c) S 3 7 6", want: []string{"S", "3", "7", "6"}},
		{name: "no name", in: "7 sleep S 3 7 7"},
		{name: "nothing after the name", in: "7 (x) "},
		{name: "a state of two characters", in: "7 (x) SS 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := StatFields([]byte(tt.in))
			if tt.want == nil {
				if err == nil {
					t.Fatalf("StatFields(%q) = %q, want an error", tt.in, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("StatFields(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestStatFieldsSelf reads the stat of the thread that reads it, which
// runs (R) while it does; the process's leader, /proc/self/stat, may be
// another thread, asleep.
func TestStatFieldsSelf(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile("/proc/thread-self/stat")
	if err != nil {
		t.Fatal(err)
	}
	f, err := StatFields(b)
	if err != nil {
		t.Fatal(err)
	}
	if f[0] != "R" || f[1] != fmt.Sprint(os.Getppid()) {
		t.Errorf("state %s, parent %s; want R and %d", f[0], f[1], os.Getppid())
	}
}

// FuzzStatFields: any command name, which a process (a hostile one too)
// chooses itself, leaves the fields after it intact, and no input panics.
func FuzzStatFields(f *testing.F) {
	f.Add("sleep")
	f.Add("a) Z 1 1 (b")
	f.Add(")")
	f.Add(") R 99 ")
	f.Add("x\n) Z")
	f.Fuzz(func(t *testing.T, comm string) {
		_, _ = StatFields([]byte(comm))
		stat := "42 (" + comm + ") S 1 7 0 0 -1 4194560 100 0 0 0 11 12\n"
		got, err := StatFields([]byte(stat))
		want := []string{"S", "1", "7", "0", "0", "-1", "4194560", "100", "0", "0", "0", "11", "12"}
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("StatFields(%q) = %q, %v; want %q", stat, got, err, want)
		}
	})
}
