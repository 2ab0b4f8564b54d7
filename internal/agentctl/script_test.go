package agentctl

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestParseScript(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script string
		want   []string // "line method" of each step; nil: an error
		errs   []string // what the error must say
	}{
		{
			name: "calls, comments and blank lines",
			script: "# a lifecycle\n\nSystem.Health\n  /hull.agent.v1.System/GuestDetails {}\n" +
				"Containers.RemoveContainer\t{\"container_id\": \"c1\", \"force\": true}\nContainers.ListProcesses{\"container_id\":\"c1\"}\n",
			want: []string{"3 System.Health", "4 System.GuestDetails", "5 Containers.RemoveContainer", "6 Containers.ListProcesses"},
		},
		{name: "only comments", script: "# nothing\n\n", errs: []string{"no calls"}},
		{name: "byte order mark and CRLF", script: "\ufeffSystem.Health\r\n# x\r\nSystem.GuestDetails {}\r\n", want: []string{"1 System.Health", "3 System.GuestDetails"}},
		{
			// A CreateContainer line with a base64 OCI spec passes 64 KiB,
			// bufio.Scanner's default limit.
			name:   "long line",
			script: "System.Health\nContainers.CreateContainer {\"container_id\": \"c1\", \"spec\": \"" + strings.Repeat("QUFB", 50000) + "\"}\n",
			want:   []string{"1 System.Health", "2 Containers.CreateContainer"},
		},
		{name: "line over the limit", script: "System.Health\n" + strings.Repeat("x", maxScriptLine+1) + "\n", errs: []string{"line 2: ", "too long"}},
		{name: "bad method on line 2", script: "System.Health\nSystem.Helth {}\n", errs: []string{"line 2: ", "did you mean System.Health"}},
		{name: "bad request on line 3", script: "System.Health\n\nContainers.RemoveContainer {\"id\": \"c1\"}\n", errs: []string{"line 3: ", `unknown field "id"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := ParseScript(strings.NewReader(tc.script))
			if tc.want == nil {
				for _, w := range tc.errs {
					if err == nil || !strings.Contains(err.Error(), w) {
						t.Errorf("error = %v, want it to say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, st := range steps {
				got = append(got, fmt.Sprintf("%d %s", st.Line, st.Method.Name()))
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("steps %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRunScript runs scripts against a real agent: each answer follows a
// "# METHOD" line, and the first failing call ends the script with its line.
func TestRunScript(t *testing.T) {
	c := startAgent(t, 5*time.Second)
	for _, tc := range []struct {
		name    string
		script  string
		want    []string // the output's "# " lines, in order
		answers []string // what the output must hold
		err     string   // what the error must say; empty: none
		class   func(error) bool
	}{
		{
			name:    "all succeed",
			script:  "# check the agent\nSystem.Health\n\nSystem.GuestDetails {}\n",
			want:    []string{"# System.Health", "# System.GuestDetails"},
			answers: []string{`"STATUS_SERVING"`, `"transport"`},
		},
		{
			name:    "stops at the failing line",
			script:  "System.Health\nContainers.RemoveContainer {\"container_id\": \"ghost\"}\nSystem.GuestDetails\n",
			want:    []string{"# System.Health"},
			answers: []string{`"STATUS_SERVING"`},
			err:     `line 2: Containers.RemoveContainer: not found: container "ghost"`,
			class:   errdefs.IsNotFound,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := ParseScript(strings.NewReader(tc.script))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			err = c.Run(context.Background(), steps, &out)
			switch {
			case tc.err == "" && err != nil:
				t.Fatal(err)
			case tc.err != "" && (err == nil || err.Error() != tc.err || !tc.class(err)):
				t.Fatalf("error = %v, want %q with its class", err, tc.err)
			}
			var heads []string
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(l, "# ") {
					heads = append(heads, l)
				}
			}
			if strings.Join(heads, ",") != strings.Join(tc.want, ",") {
				t.Errorf("calls %q, want %q; output:\n%s", heads, tc.want, out.String())
			}
			for _, a := range tc.answers {
				if !strings.Contains(out.String(), a) {
					t.Errorf("output does not hold %s:\n%s", a, out.String())
				}
			}
		})
	}
}
