package sandbox

import (
	"testing"
	"time"
)

func TestScaledDialTimeout(t *testing.T) {
	const d = 30 * time.Second
	for _, tc := range []struct {
		name           string
		maxScale, load float64
		want           time.Duration
	}{
		{"idle host", 4, 0.3, d},
		{"busy host", 4, 2.5, 75 * time.Second},
		{"overloaded host, capped", 4, 17, 120 * time.Second},
		{"scaling off", 1, 17, d},
		{"scaling unset", 0, 17, d},
		{"load unknown", 4, 0, d},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := scaledDialTimeout(d, tc.maxScale, tc.load); got != tc.want {
				t.Errorf("scaledDialTimeout(%s, %v, %v) = %s, want %s", d, tc.maxScale, tc.load, got, tc.want)
			}
		})
	}
	if l := hostLoadPerCPU(); l < 0 {
		t.Errorf("host load per CPU %v", l)
	}
}

func TestCheckRoom(t *testing.T) {
	if err := checkRoom(t.TempDir()); err != nil {
		t.Errorf("a temporary directory: %v", err)
	}
	if err := checkRoom("/no/such/root"); err == nil {
		t.Error("a missing root passed")
	}
}
