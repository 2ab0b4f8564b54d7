package e2e

import "testing"

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
