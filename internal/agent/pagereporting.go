package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/log"
)

// reportingOrderParam is the kernel parameter that sets the free page
// reporting order: the smallest free block, as a page order, that the
// guest hands to the host.
const reportingOrderParam = "page_reporting.page_reporting_order"

// reportingOrderFile is that parameter under /sys; it is writable at run
// time.
const reportingOrderFile = "module/page_reporting/parameters/page_reporting_order"

// maxReportingOrder is the largest order Linux reports (MAX_ORDER - 1).
const maxReportingOrder = 10

// reportingOrder returns the free page reporting order on a kernel command
// line (the last one wins), or -1 when there is none; an error when the
// value is not an order the kernel reports.
func reportingOrder(cmdline string) (int, error) {
	order := -1
	var err error
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		if k != reportingOrderParam {
			continue
		}
		n, perr := strconv.Atoi(v)
		order, err = n, nil
		if perr != nil || n < 0 || n > maxReportingOrder {
			order, err = -1, fmt.Errorf("%s=%q: not an order from 0 to %d", reportingOrderParam, v, maxReportingOrder)
		}
	}
	return order, err
}

// applyReportingOrder sets the free page reporting order to the one on
// the kernel command line. Linux 6.1 parses the parameter at boot but
// overwrites it with the pageblock order (2 MiB blocks) when the balloon
// driver registers for page reporting, so without this a guest keeps the
// memory it touched at boot and freed in smaller blocks. Reporting then
// goes on with the new order at the next free. Nothing to do without the
// parameter, or in a kernel built without page reporting (the file is
// missing then). A kernel with it has the file whether or not a balloon
// driver registered (CONFIG_PAGE_REPORTING is built in even where the
// balloon is a module); without one the order set changes nothing.
func applyReportingOrder(ctx context.Context, sys, cmdline string) error {
	order, err := reportingOrder(cmdline)
	if err != nil || order < 0 {
		return err
	}
	path := filepath.Join(sys, reportingOrderFile)
	cur, err := os.ReadFile(path) //nolint:gosec // G304: a fixed path under the guest's /sys
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the free page reporting order: %w", err)
	}
	want := strconv.Itoa(order)
	if strings.TrimSpace(string(cur)) == want {
		return nil
	}
	if err := os.WriteFile(path, []byte(want), 0); err != nil { //nolint:gosec // G703: a fixed path under the guest's /sys
		return fmt.Errorf("setting the free page reporting order to %s: %w", want, err)
	}
	log.G(ctx).WithFields(log.Fields{"from": strings.TrimSpace(string(cur)), "to": want}).Debug("free page reporting order set")
	return nil
}
