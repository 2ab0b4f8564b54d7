// Package mountopt turns mount(8) options into mount(2) flags and file
// system data, for the host's shared tree and the agent's guest mounts alike.
package mountopt

import (
	"strings"

	"golang.org/x/sys/unix"
)

// flags are the options of mount(8) that are flags, with whether they
// set or clear the flag.
var flags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro":          {false, unix.MS_RDONLY},
	"rw":          {true, unix.MS_RDONLY},
	"nosuid":      {false, unix.MS_NOSUID},
	"suid":        {true, unix.MS_NOSUID},
	"nodev":       {false, unix.MS_NODEV},
	"dev":         {true, unix.MS_NODEV},
	"noexec":      {false, unix.MS_NOEXEC},
	"exec":        {true, unix.MS_NOEXEC},
	"sync":        {false, unix.MS_SYNCHRONOUS},
	"async":       {true, unix.MS_SYNCHRONOUS},
	"dirsync":     {false, unix.MS_DIRSYNC},
	"noatime":     {false, unix.MS_NOATIME},
	"atime":       {true, unix.MS_NOATIME},
	"nodiratime":  {false, unix.MS_NODIRATIME},
	"diratime":    {true, unix.MS_NODIRATIME},
	"relatime":    {false, unix.MS_RELATIME},
	"norelatime":  {true, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME},
	"lazytime":    {false, unix.MS_LAZYTIME},
	"nolazytime":  {true, unix.MS_LAZYTIME},
	"defaults":    {},
}

// Parse splits mount(8) options into mount(2) flags and the data string
// passed to the file system. Later options win over earlier ones ("ro" then
// "rw" is read-write). An element may hold several options separated by
// commas, as mount(8) -o does: each counts, so that a flag cannot hide in
// the data behind another option.
func Parse(opts []string) (uintptr, string) {
	var (
		set  uintptr
		data []string
	)
	var split []string
	for _, o := range opts {
		split = append(split, strings.Split(o, ",")...)
	}
	for _, o := range split {
		if f, ok := flags[o]; ok {
			if f.clear {
				set &^= f.flag
			} else {
				set |= f.flag
			}
			continue
		}
		data = append(data, o)
	}
	return set, strings.Join(data, ",")
}
