package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// consoleLogName is the VM console's log in a state directory (the QEMU
// driver's).
const consoleLogName = "console.log"

func newLogsCommand(g *globalFlags) *cobra.Command {
	var console, agentOnly bool
	cmd := &cobra.Command{
		Use:   "logs SANDBOX",
		Short: "Print a sandbox's VM console and agent log",
		Long: "Print the logs a running sandbox keeps in its state directory: the VM's serial\n" +
			"console (console.log) and the agent's log as the host relayed it (agent.log), each\n" +
			"bounded by runtime.guest_log_max_bytes with its previous part (.1) first. SANDBOX is\n" +
			"the sandbox's ID or a container ID that containerd started (as for hull exec).\n" +
			"Both logs are guest output: untrusted text, printed with control characters escaped.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.load(cmd.Context())
			if err != nil {
				return err
			}
			dir, _, err := sandbox.Find(c.Runtime.StateDir, args[0])
			if err != nil {
				return err
			}
			var names []string
			if !agentOnly {
				names = append(names, consoleLogName)
			}
			if !console {
				names = append(names, sandbox.AgentLogName)
			}
			out := cmd.OutOrStdout()
			for _, name := range names {
				if len(names) > 1 {
					_, _ = fmt.Fprintf(out, "==> %s <==\n", name)
				}
				path := filepath.Join(dir, name)
				for _, p := range []string{child.RotatedPath(path), path} {
					if err := copyEscaped(out, p); err != nil && !errors.Is(err, os.ErrNotExist) {
						return err
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&console, "console", false, "print only the VM console")
	cmd.Flags().BoolVar(&agentOnly, "agent", false, "print only the agent log")
	return cmd
}

// copyEscaped copies a guest-written file, escaping the bytes a terminal
// would act on (C0 controls but tab and newline, DEL) as \xNN.
func copyEscaped(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	r := bufio.NewReaderSize(f, 32<<10)
	bw := bufio.NewWriterSize(w, 32<<10)
	for {
		c, size, rerr := r.ReadRune()
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return bw.Flush()
			}
			return rerr
		}
		switch {
		case c == utf8.RuneError && size == 1:
			// Not UTF-8: the byte itself, escaped.
			if err := r.UnreadRune(); err != nil {
				return err
			}
			b, _ := r.ReadByte()
			_, err = fmt.Fprintf(bw, `\x%02x`, b)
		case (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f:
			_, err = fmt.Fprintf(bw, `\x%02x`, c)
		case c >= 0x80 && c <= 0x9f:
			// C1 controls (CSI is U+009B) drive terminals as ESC does.
			_, err = fmt.Fprintf(bw, `\u%04x`, c)
		default:
			_, err = bw.WriteRune(c)
		}
		if err != nil {
			return err
		}
	}
}
