package agentclient

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// hostEntry is a logger like the shim's: host fields already set.
func hostEntry(out *bytes.Buffer, f logrus.Formatter) *log.Entry {
	l := logrus.New()
	l.Out = out
	l.Level = logrus.TraceLevel
	l.Formatter = f
	return logrus.NewEntry(l).WithField("sandbox", "pod-1").WithField("namespace", "k8s.io")
}

var formatters = map[string]logrus.Formatter{
	"text": &logrus.TextFormatter{DisableColors: true},
	"json": &logrus.JSONFormatter{},
}

// hostKeys are the fields a relayed line may carry besides guest.*: the
// host logger's, the relay's and the formatter's.
var hostKeys = map[string]bool{
	"sandbox": true, "namespace": true, "source": true, "agent_time": true, "truncated": true,
	"level": true, "msg": true, "time": true,
}

// checkOneLine asserts that out is one JSON log line whose keys are host
// keys or guest.* keys made of the safe charset, and returns it decoded.
func checkOneLine(t testing.TB, out []byte) map[string]any {
	t.Helper()
	if bytes.Count(out, []byte("\n")) != 1 || out[len(out)-1] != '\n' {
		t.Fatalf("not one line: %q", out)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("%v: %q", err, out)
	}
	for k := range m {
		if hostKeys[k] {
			continue
		}
		g, ok := strings.CutPrefix(k, GuestFieldPrefix)
		if !ok || g == "" || strings.Trim(g, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != "" {
			t.Fatalf("key %q is neither a host key nor a safe guest.* key: %q", k, out)
		}
	}
	if m["sandbox"] != "pod-1" || m["namespace"] != "k8s.io" || m["source"] != "agent" {
		t.Fatalf("host fields changed: %q", out)
	}
	return m
}

func TestRelog(t *testing.T) {
	for _, tc := range []struct {
		name   string
		line   string
		level  logrus.Level
		msg    string
		fields map[string]any
	}{
		{
			name: "json", line: `{"level":"debug","msg":"module loaded","module":"virtio","time":"2026-01-01T00:00:00Z"}`,
			level: logrus.DebugLevel, msg: "module loaded",
			fields: map[string]any{"source": "agent", "guest.module": "virtio", "agent_time": "2026-01-01T00:00:00Z"},
		},
		{
			name: "fatal is lowered", line: `{"level":"fatal","msg":"boom"}`,
			level: logrus.ErrorLevel, msg: "boom", fields: map[string]any{"source": "agent"},
		},
		{
			name: "not json", line: `plain text`,
			level: logrus.InfoLevel, msg: "plain text", fields: map[string]any{"source": "agent"},
		},
		{
			name: "guest fields cannot overwrite host fields", line: `{"msg":"hi","sandbox":"other-pod","namespace":"default","source":"host","truncated":false}`,
			level: logrus.InfoLevel, msg: "hi",
			fields: map[string]any{"source": "agent", "guest.sandbox": "other-pod", "guest.namespace": "default", "guest.source": "host", "guest.truncated": "false"},
		},
		{
			name: "forged key with a newline", line: `{"msg":"x","a\ntime=\"2020\" level=error msg=\"forged\" b":"c"}`,
			level: logrus.InfoLevel, msg: "x",
			fields: map[string]any{"source": "agent", `guest.a_time__2020__level_error_msg__forged__b`: "c"},
		},
		{
			name: "control characters escaped", line: `{"msg":"a\nb\u001b[31m\u2028","k":"v\r\nlevel=error","n":12,"o":{"x":[1,"\n"]}}`,
			level: logrus.InfoLevel, msg: `a\nb\x1b[31m\u2028`,
			fields: map[string]any{"source": "agent", "guest.k": `v\r\nlevel=error`, "guest.n": "12", "guest.o": `{"x":[1,"\n"]}`},
		},
		{
			name: "invalid utf-8 escaped", line: "plain \xff\xfe text",
			level: logrus.InfoLevel, msg: `plain \xff\xfe text`, fields: map[string]any{"source": "agent"},
		},
		{
			name: "long message cut", line: `{"msg":"` + strings.Repeat("m", 10000) + `"}`,
			level: logrus.InfoLevel, msg: strings.Repeat("m", maxLogMsg),
			fields: map[string]any{"source": "agent", "truncated": true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs captureLog
			e := logs.entry().WithField("sandbox", "pod-1")
			relog(e, []byte(tc.line))
			if len(logs.entries) != 1 {
				t.Fatalf("%d entries", len(logs.entries))
			}
			got := logs.entries[0]
			tc.fields["sandbox"] = "pod-1"
			if got.Level != tc.level || got.Message != tc.msg || len(got.Data) != len(tc.fields) {
				t.Fatalf("entry = %v %q %v", got.Level, got.Message, got.Data)
			}
			for k, v := range tc.fields {
				if got.Data[k] != v {
					t.Errorf("field %s = %#v, want %#v", k, got.Data[k], v)
				}
			}
		})
	}
}

// TestRelogOneHostLine renders hostile lines through logrus's text and
// JSON formatters: each gives exactly one host line, the host's fields
// intact, and the line stays bounded.
func TestRelogOneHostLine(t *testing.T) {
	many := map[string]string{}
	for i := range 200 {
		many[fmt.Sprintf("key%03d", i)] = strings.Repeat("v", 300)
	}
	manyJSON, err := json.Marshal(many)
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]string{
		"newline in key":   `{"msg":"m","x\nlevel=error msg=forged sandbox=other\n":"1"}`,
		"newline in value": `{"msg":"m","x":"1\nlevel=error msg=forged"}`,
		"newline in msg":   `{"msg":"m\ntime=\"x\" level=fatal msg=forged"}`,
		"quote and equals": `{"msg":"m","a\"=b c":"d\" e=f"}`,
		"many fields":      string(manyJSON),
		"long key":         `{"` + strings.Repeat("k", 100000) + `":"v"}`,
		"carriage return":  "text with \r carriage return",
	}
	for fname, f := range formatters {
		for name, line := range lines {
			t.Run(fname+"/"+name, func(t *testing.T) {
				var out bytes.Buffer
				relog(hostEntry(&out, f), []byte(line))
				b := out.Bytes()
				if bytes.Count(b, []byte("\n")) != 1 || b[len(b)-1] != '\n' || bytes.ContainsRune(b, '\r') {
					t.Fatalf("not one line: %q", b)
				}
				// Host line = guest budget + host fields and the
				// formatter's quoting (at most x2 for escapes).
				if len(b) > 2*maxLogLine+512 {
					t.Fatalf("host line of %d bytes", len(b))
				}
				if fname == "json" {
					checkOneLine(t, b)
				} else if !bytes.Contains(b, []byte("namespace=k8s.io")) || !bytes.Contains(b, []byte("sandbox=pod-1")) || bytes.Count(b, []byte("sandbox=")) != 1 {
					t.Fatalf("host fields lost or forged: %q", b)
				}
			})
		}
	}
}

// fakeClock is a settable time source.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestRelayRateLimit(t *testing.T) {
	var logs captureLog
	clock := &fakeClock{t: time.Unix(1000, 0)}
	r := newLogRelay(logs.entry())
	r.now, r.last = clock.now, clock.t
	var in strings.Builder
	const flood = 5000
	for i := range flood {
		fmt.Fprintf(&in, "{\"msg\":\"line %d\"}\n", i)
	}
	r.forward(strings.NewReader(in.String()))
	var relayed, summaries int
	var reported uint64
	for _, e := range logs.entries {
		if strings.HasPrefix(e.Message, "agent log lines dropped") {
			summaries++
			reported += e.Data["dropped"].(uint64)
			continue
		}
		relayed++
	}
	if relayed != logBurst {
		t.Errorf("%d lines relayed at one instant, want the burst of %d", relayed, logBurst)
	}
	if r.Dropped() != flood-logBurst || reported != r.Dropped() {
		t.Errorf("Dropped() = %d, summaries report %d; want %d", r.Dropped(), reported, flood-logBurst)
	}
	// One summary right away (the first dropped line), one at the end.
	if summaries != 2 {
		t.Errorf("%d summary lines, want 2", summaries)
	}

	// A second later the bucket holds logRate tokens.
	logs.entries = nil
	clock.t = clock.t.Add(time.Second)
	r.forward(strings.NewReader(in.String()))
	relayed = 0
	for _, e := range logs.entries {
		if !strings.HasPrefix(e.Message, "agent log lines dropped") {
			relayed++
		}
	}
	if relayed != logRate {
		t.Errorf("%d lines relayed a second later, want %d", relayed, logRate)
	}
	c := &Client{logs: r}
	if c.DroppedLogLines() != 2*flood-logBurst-logRate {
		t.Errorf("DroppedLogLines = %d, want %d", c.DroppedLogLines(), 2*flood-logBurst-logRate)
	}
	if (&Client{}).DroppedLogLines() != 0 {
		t.Error("a client without a log stream reports dropped lines")
	}
}

// TestRelayHugeLine sends a line far above the input bound: it is relogged
// cut and marked, and the stream goes on with the next line.
func TestRelayHugeLine(t *testing.T) {
	var logs captureLog
	r := newLogRelay(logs.entry())
	in := `{"msg":"` + strings.Repeat("x", 1<<20) + "\"}\n" + `{"msg":"next"}` + "\n"
	r.forward(strings.NewReader(in))
	if len(logs.entries) != 2 {
		t.Fatalf("%d entries, want 2", len(logs.entries))
	}
	first := logs.entries[0]
	if len(first.Message) > maxLogMsg || first.Data["truncated"] != true {
		t.Errorf("huge line relogged as %d bytes, fields %v", len(first.Message), first.Data)
	}
	if logs.entries[1].Message != "next" {
		t.Errorf("the line after the huge one: %q", logs.entries[1].Message)
	}
}

// FuzzRelog relogs arbitrary bytes through the JSON formatter: whatever
// arrives, the output is one bounded line with the host's fields intact and
// only host keys and safe guest.* keys.
func FuzzRelog(f *testing.F) {
	f.Add([]byte(`{"level":"info","msg":"agent serving","transport":"serial"}`))
	f.Add([]byte(`{"msg":"x","sandbox":"other","a\nb":"c\u2028"}`))
	f.Add([]byte("\x00\x1b[2J\xff plain"))
	f.Fuzz(func(t *testing.T, line []byte) {
		var out bytes.Buffer
		relog(hostEntry(&out, formatters["json"]), line)
		b := out.Bytes()
		if len(b) > 2*maxLogLine+1024 {
			t.Fatalf("host line of %d bytes", len(b))
		}
		m := checkOneLine(t, b)
		if msg, _ := m["msg"].(string); strings.ContainsFunc(msg, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("control character in the message %q", msg)
		}
		for k, v := range m {
			if s, ok := v.(string); ok && strings.HasPrefix(k, GuestFieldPrefix) && strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("control character in %s=%q", k, s)
			}
		}
		var text bytes.Buffer
		relog(hostEntry(&text, formatters["text"]), line)
		if tb := text.Bytes(); bytes.Count(tb, []byte("\n")) != 1 || bytes.Count(tb, []byte(" sandbox=")) != 1 {
			t.Fatalf("text formatter: not one line with one sandbox field: %q", tb)
		}
	})
}
