package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReportingOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmdline string
		want    int
		err     string
	}{
		{name: "none", cmdline: "console=ttyS0 quiet", want: -1},
		{name: "order", cmdline: "quiet page_reporting.page_reporting_order=3 panic=-1", want: 3},
		{name: "last wins", cmdline: "page_reporting.page_reporting_order=9 page_reporting.page_reporting_order=0", want: 0},
		{name: "largest", cmdline: "page_reporting.page_reporting_order=10", want: 10},
		{name: "too large", cmdline: "page_reporting.page_reporting_order=11", want: -1, err: `"11": not an order`},
		{name: "not a number", cmdline: "page_reporting.page_reporting_order=x", want: -1, err: `"x": not an order`},
		{name: "empty", cmdline: "page_reporting.page_reporting_order", want: -1, err: `"": not an order`},
		{name: "bad then good", cmdline: "page_reporting.page_reporting_order=x page_reporting.page_reporting_order=2", want: 2},
		{name: "similar name", cmdline: "page_reporting.page_reporting_orders=2 xpage_reporting.page_reporting_order=2", want: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := reportingOrder(tc.cmdline)
			if got != tc.want {
				t.Errorf("order = %d, want %d", got, tc.want)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("error = %v, want none", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("error = %v, want it to contain %q", err, tc.err)
			}
		})
	}
}

func TestApplyReportingOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cur     string // "" for no file
		cmdline string
		want    string // the file afterwards
		wantErr bool
	}{
		{name: "overwritten at registration", cur: "9\n", cmdline: "page_reporting.page_reporting_order=3", want: "3"},
		{name: "already set", cur: "3\n", cmdline: "page_reporting.page_reporting_order=3", want: "3\n"},
		{name: "no parameter", cur: "9\n", cmdline: "quiet", want: "9\n"},
		{name: "no page reporting", cmdline: "page_reporting.page_reporting_order=3"},
		{name: "bad parameter", cur: "9\n", cmdline: "page_reporting.page_reporting_order=12", want: "9\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := t.TempDir()
			path := filepath.Join(sys, reportingOrderFile)
			if tc.cur != "" {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(tc.cur), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := applyReportingOrder(context.Background(), sys, tc.cmdline)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error = %v, want error %v", err, tc.wantErr)
			}
			got, rerr := os.ReadFile(path)
			if tc.cur == "" {
				if rerr == nil {
					t.Errorf("%s was created", path)
				}
				return
			}
			if string(got) != tc.want {
				t.Errorf("file = %q, want %q", got, tc.want)
			}
		})
	}
}
