package agentclient

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// Bounds of the agent log relay. The agent, like everything in the guest,
// is untrusted: its lines are re-logged on the host only in this shape.
const (
	// maxLogInput is the longest input line decoded; the rest of a longer
	// line is discarded and what was kept is re-logged as text.
	maxLogInput = 64 << 10
	// maxLogLine bounds the guest's part of one host line: the message
	// plus every guest key and value.
	maxLogLine = 4 << 10
	// maxLogMsg, maxLogKey and maxLogValue bound the message, one key and
	// one value; maxLogFields the number of guest fields.
	maxLogMsg    = 2 << 10
	maxLogKey    = 64
	maxLogValue  = 512
	maxLogFields = 24
	// logRate lines per second pass on average, logBurst at once (the
	// agent replays up to 4096 buffered lines when the host connects).
	logRate  = 200
	logBurst = 1000
	// logSummaryEvery is the shortest interval between two lines that
	// report dropped lines.
	logSummaryEvery = 10 * time.Second
	// GuestFieldPrefix starts the name of every field that comes from the
	// guest, so that no guest field can stand for a host field.
	GuestFieldPrefix = "guest."
)

// logRelay re-logs the agent's log stream on the host. Only the goroutine
// that runs forward uses its fields, except dropped and to.
type logRelay struct {
	// to is where the lines go; SetLog changes it from any goroutine.
	to  atomic.Pointer[log.Entry]
	now func() time.Time

	// tokens and last are the rate limit's bucket.
	tokens float64
	last   time.Time
	// pending counts lines dropped since the last summary, sent at
	// lastSummary.
	pending     uint64
	lastSummary time.Time
	// dropped counts every line dropped by the rate limit; read by any
	// goroutine.
	dropped atomic.Uint64
}

func newLogRelay(to *log.Entry) *logRelay {
	r := &logRelay{now: time.Now, tokens: logBurst}
	r.to.Store(to)
	r.last = r.now()
	return r
}

// Dropped is how many agent log lines the rate limit has dropped so far.
func (r *logRelay) Dropped() uint64 { return r.dropped.Load() }

// forward re-logs every line read from rd until rd ends. It holds at most
// maxLogInput bytes of a line.
func (r *logRelay) forward(rd io.Reader) {
	br := bufio.NewReaderSize(rd, 4096)
	buf := make([]byte, 0, 4096)
	long := false
	for {
		chunk, err := br.ReadSlice('\n')
		if room := maxLogInput - len(buf); len(chunk) > room {
			chunk, long = chunk[:room], true
		}
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(buf) > 0 {
			r.line(buf, long)
		}
		buf, long = buf[:0], false
		if err != nil {
			break
		}
	}
	if r.pending > 0 {
		r.summary()
	}
}

// allow takes a token from the bucket.
func (r *logRelay) allow() bool {
	now := r.now()
	if d := now.Sub(r.last); d > 0 {
		r.tokens = min(logBurst, r.tokens+d.Seconds()*logRate)
	}
	r.last = now
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}

// summary logs how many lines were dropped since the last summary.
func (r *logRelay) summary() {
	r.to.Load().WithField("source", "agent").WithField("dropped", r.pending).WithField("dropped_total", r.dropped.Load()).
		Warn("agent log lines dropped: the agent logs faster than the host relays")
	r.pending, r.lastSummary = 0, r.now()
}

// line re-logs one line of the stream (long: it was cut at maxLogInput).
func (r *logRelay) line(b []byte, long bool) {
	if !r.allow() {
		r.pending++
		r.dropped.Add(1)
		if r.now().Sub(r.lastSummary) >= logSummaryEvery {
			r.summary()
		}
		return
	}
	if r.pending > 0 && r.now().Sub(r.lastSummary) >= logSummaryEvery {
		r.summary()
	}
	level, msg, fields := relogEntry(b, long)
	r.to.Load().WithFields(fields).Log(level, msg)
}

// relog re-logs one line through to, without rate limit.
func relog(to *log.Entry, b []byte) {
	level, msg, fields := relogEntry(b, false)
	to.WithFields(fields).Log(level, msg)
}

// relogEntry turns one line of the agent's stream into what the host logs:
// the level (panic and fatal lowered to error), the message, and the
// fields: source=agent, agent_time (the agent's own timestamp; the guest
// clock may be off until the host sets it), truncated when anything was
// cut, and every other agent field as guest.<key> with a string value.
// Keys keep only [A-Za-z0-9_.-]; control characters in the message and
// values are escaped; everything is bounded by maxLogLine and friends. A
// line that is not a JSON object becomes the message.
func relogEntry(b []byte, long bool) (logrus.Level, string, logrus.Fields) {
	b = bytes.TrimRight(b, "\r\n")
	fields := logrus.Fields{"source": "agent"}
	cut := long
	var obj map[string]json.RawMessage
	if long || json.Unmarshal(b, &obj) != nil || obj == nil {
		msg, c := sanitize(string(b), maxLogMsg)
		if cut || c {
			fields["truncated"] = true
		}
		return logrus.InfoLevel, msg, fields
	}
	level := logrus.InfoLevel
	if s, ok := jsonString(obj["level"]); ok {
		if l, err := logrus.ParseLevel(s); err == nil {
			level = l
		}
	}
	if level == logrus.PanicLevel || level == logrus.FatalLevel {
		// Re-logging at these levels would panic or exit the host.
		level = logrus.ErrorLevel
	}
	msgRaw, _ := jsonString(obj["msg"])
	msg, c := sanitize(msgRaw, maxLogMsg)
	cut = cut || c
	budget := maxLogLine - len(msg)
	if raw, ok := obj["time"]; ok {
		t, c := sanitize(jsonText(raw), maxLogKey)
		fields["agent_time"], cut = t, cut || c
	}
	delete(obj, "level")
	delete(obj, "msg")
	delete(obj, "time")
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	n := 0
	for _, k := range keys {
		key := GuestFieldPrefix + sanitizeKey(k)
		v, c := sanitize(jsonText(obj[k]), maxLogValue)
		if n == maxLogFields || len(key)+len(v) > budget {
			cut = true
			break
		}
		fields[key], cut = v, cut || c
		budget -= len(key) + len(v)
		n++
	}
	if cut {
		fields["truncated"] = true
	}
	return level, msg, fields
}

// jsonString returns raw's string value when raw is a JSON string.
func jsonString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// jsonText is a JSON value as text: a string's contents, or any other
// value in compact JSON.
func jsonText(raw json.RawMessage) string {
	if s, ok := jsonString(raw); ok {
		return s
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// sanitizeKey keeps [A-Za-z0-9_.-] of a guest key, replaces anything else
// by '_' and cuts it at maxLogKey bytes.
func sanitizeKey(k string) string {
	if k == "" {
		return "_"
	}
	b := make([]byte, 0, min(len(k), maxLogKey))
	for i := 0; i < len(k) && len(b) < maxLogKey; i++ {
		switch c := k[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
			b = append(b, c)
		default:
			b = append(b, '_')
		}
	}
	return string(b)
}

// sanitize escapes control characters (C0, DEL, C1, and the Unicode line
// and paragraph separators) and invalid UTF-8 in s, Go-style (\n, \x1b,
// \u2028), and cuts the result at limit bytes; cut reports whether it did.
func sanitize(s string, limit int) (out string, cut bool) {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && size <= 1:
			piece = `\x` + strconv.FormatUint(uint64(s[i])|0x100, 16)[1:]
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029':
			q := strconv.QuoteRune(r)
			piece = q[1 : len(q)-1]
		default:
			piece = s[i : i+size]
		}
		if b.Len()+len(piece) > limit {
			return b.String(), true
		}
		b.WriteString(piece)
		i += size
	}
	return b.String(), false
}
