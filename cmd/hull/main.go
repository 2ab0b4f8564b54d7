// Command hull is hull's administration tool: host checks, the effective
// environment, guest image builds, a developer boot of a VM, the debug
// console of a running sandbox, and calls to an agent's methods by name.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// SIGHUP too: a closed terminal must not leave a VM that --boot or
	// boot started behind.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer cancel()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		fmt.Fprintln(os.Stderr, "hull:", err)
		var se statusError
		if errors.As(err, &se) {
			os.Exit(se.status)
		}
		os.Exit(1)
	}
}

// exitError ends the program with a status and no message: the command has
// already said what went wrong.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// statusError is an error that ends the program with its status instead of
// 1, after its message.
type statusError struct {
	status int
	err    error
}

func (e statusError) Error() string { return e.err.Error() }
func (e statusError) Unwrap() error { return e.err }
