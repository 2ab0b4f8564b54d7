package procfs

import (
	"bytes"
	"errors"
	"strings"
)

// StatFields splits the contents of /proc/<pid>/stat into the fields that
// follow the command name: f[0] is field 3 of proc(5) (the state, one
// character), f[1] field 4 (the parent's PID), and field n is f[n-3]. The
// command name is in parentheses and may hold anything, spaces and
// parentheses too, so the fields are counted from the last ')'.
func StatFields(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) == 0 || len(f[0]) != 1 {
		return nil, errors.New("stat: no state after the command name")
	}
	return f, nil
}
