package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestCopyEscaped(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain", "hello\n\tworld\n", "hello\n\tworld\n"},
		{"escape sequence", "\x1b[2Jgone\r\n", `\x1b[2Jgone\x0d` + "\n"},
		{"nul and del", "a\x00b\x7f", `a\x00b\x7f`},
		{"utf8 kept", "héllo\n", "héllo\n"},
		{"c1 csi", "a\u009b2Jb", `a\u009b2Jb`},
		{"not utf8", "a\xff\xc2b", `a\xff\xc2b`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(p, []byte(tc.in), 0o600); err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := copyEscaped(&b, p); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got %q, want %q", b.String(), tc.want)
			}
		})
	}
}
