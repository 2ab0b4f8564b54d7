package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestLogRingLimits(t *testing.T) {
	for _, tc := range []struct {
		name               string
		maxLines, maxBytes int
		add                []string
		from               uint64
		want               []string
		dropped            uint64
	}{
		{"all kept", 10, 100, []string{"a", "b"}, 0, []string{"a", "b"}, 0},
		{"line limit", 2, 100, []string{"a", "b", "c"}, 0, []string{"b", "c"}, 1},
		{"byte limit", 10, 4, []string{"aa", "bb", "cc"}, 0, []string{"bb", "cc"}, 1},
		{"long line cut", 10, 4, []string{"abcdef"}, 0, []string{"abcd"}, 0},
		{"read from middle", 10, 100, []string{"a", "b", "c"}, 2, []string{"c"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newLogRing(tc.maxLines, tc.maxBytes)
			for _, l := range tc.add {
				r.add([]byte(l))
			}
			lines, next, dropped, err := r.read(context.Background(), tc.from)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range lines {
				got = append(got, string(l))
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") || dropped != tc.dropped || next != uint64(len(tc.add)) {
				t.Fatalf("read = %q next %d dropped %d; want %q dropped %d", got, next, dropped, tc.want, tc.dropped)
			}
		})
	}
}

func TestLogRingWaits(t *testing.T) {
	r := newLogRing(10, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, _, err := r.read(ctx, 0); err == nil {
		t.Fatal("read of an empty ring returned")
	}
	go func() { time.Sleep(20 * time.Millisecond); r.add([]byte("late")) }()
	lines, _, _, err := r.read(context.Background(), 0)
	if err != nil || len(lines) != 1 || string(lines[0]) != "late" {
		t.Fatalf("read = %q, %v", lines, err)
	}
}

// TestLoggerOutputs checks that a log channel gets JSON lines from before
// and after it connects, at every enabled level, and the console only text
// at info level and above.
func TestLoggerOutputs(t *testing.T) {
	ring := newLogRing(100, 1<<20)
	var console strings.Builder
	l := newLogger(&console, ring, logrus.DebugLevel)
	l.WithField("k", "v").Info("early")
	l.Debug("quiet")
	l.Trace("dropped by level")

	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = ring.stream(ctx, pw); _ = pw.Close() }()
	l.Warn("late")

	sc := bufio.NewScanner(pr)
	var got []string
	for len(got) < 3 && sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, fmt.Sprintf("%s:%s", m["level"], m["msg"]))
		if m["msg"] == "early" && m["k"] != "v" {
			t.Errorf("fields lost: %v", m)
		}
	}
	cancel()
	if want := "info:early,debug:quiet,warning:late"; strings.Join(got, ",") != want {
		t.Fatalf("stream = %q, want %q", got, want)
	}
	if c := console.String(); !strings.Contains(c, "msg=early k=v") || strings.Contains(c, "quiet") || !strings.Contains(c, "level=warning msg=late") {
		t.Fatalf("console = %q", c)
	}
}

func TestFormatRingEntry(t *testing.T) {
	e := &logrus.Entry{
		Time:    time.Date(2026, 11, 23, 1, 2, 3, 4, time.UTC),
		Level:   logrus.WarnLevel,
		Message: "a \"quoted\"\nline\x01\xff",
		Data: logrus.Fields{
			"took":   1500 * time.Millisecond,
			"error":  fmt.Errorf("bad\tthing"),
			"count":  3,
			"ok":     true,
			"ratio":  0.5,
			"msg":    "clash",
			"nil":    nil,
			"struct": struct{ A int }{7},
		},
	}
	b := formatRingEntry(e)
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("not JSON: %v: %s", err, b)
	}
	want := map[string]any{
		"time": "2026-11-23T01:02:03.000000004Z", "level": "warning", "msg": "a \"quoted\"\nline\x01\ufffd",
		"took": "1.5s", "error": "bad\tthing", "count": float64(3), "ok": true, "ratio": 0.5,
		"fields.msg": "clash", "nil": nil, "struct": "{7}",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	if !strings.HasPrefix(string(b), `{"count":3,"error":`) {
		t.Errorf("keys not sorted: %s", b)
	}
}
