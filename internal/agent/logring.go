package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
)

// logRing keeps the agent's last log lines, JSON encoded, and lets any number
// of log channels follow it. Writers never block on readers: a reader that
// falls behind by more than the ring holds is told how many lines it missed.
type logRing struct {
	maxLines int
	maxBytes int

	mu sync.Mutex
	// lines holds the retained lines; lines[i] has sequence number first+i.
	// Guarded by mu.
	lines [][]byte
	// first is the sequence number of lines[0]. Guarded by mu.
	first uint64
	// size is the sum of len(lines[i]). Guarded by mu.
	size int
	// wake is closed and replaced whenever a line is added. Guarded by mu.
	wake chan struct{}
}

func newLogRing(maxLines, maxBytes int) *logRing {
	return &logRing{maxLines: maxLines, maxBytes: maxBytes, wake: make(chan struct{})}
}

// add appends one line (without its newline) and drops the oldest lines over
// the limits.
func (r *logRing) add(line []byte) {
	if len(line) > r.maxBytes {
		line = line[:r.maxBytes]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, line)
	r.size += len(line)
	for len(r.lines) > r.maxLines || r.size > r.maxBytes {
		r.size -= len(r.lines[0])
		r.lines[0] = nil
		r.lines = r.lines[1:]
		r.first++
	}
	close(r.wake)
	r.wake = make(chan struct{})
}

// read returns the lines from sequence number from on, the number to read
// from next time, and how many lines between from and the oldest retained one
// were dropped. With no line at or after from it waits until there is one or
// ctx is done.
func (r *logRing) read(ctx context.Context, from uint64) (lines [][]byte, next, dropped uint64, err error) {
	for {
		r.mu.Lock()
		end := r.first + uint64(len(r.lines))
		if from < r.first {
			dropped = r.first - from
			from = r.first
		}
		if from < end {
			lines = append([][]byte(nil), r.lines[from-r.first:]...)
			r.mu.Unlock()
			return lines, end, dropped, nil
		}
		wake := r.wake
		r.mu.Unlock()
		if dropped > 0 {
			return nil, from, dropped, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, from, 0, ctx.Err()
		}
	}
}

// stream writes every retained line and then every new one to w, one JSON
// object a line, until ctx is done or a write fails.
func (r *logRing) stream(ctx context.Context, w io.Writer) error {
	var (
		next uint64
		buf  bytes.Buffer
	)
	for {
		lines, n, dropped, err := r.read(ctx, next)
		if err != nil {
			return err
		}
		next = n
		buf.Reset()
		if dropped > 0 {
			fmt.Fprintf(&buf, `{"level":"warning","msg":"agent log lines dropped","dropped":%d}`+"\n", dropped)
		}
		for _, l := range lines {
			buf.Write(l)
			buf.WriteByte('\n')
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return fmt.Errorf("writing log stream: %w", err)
		}
	}
}

// ringHook copies every log entry into the ring as a JSON line.
type ringHook struct {
	ring *logRing
}

func (h *ringHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *ringHook) Fire(e *logrus.Entry) error {
	h.ring.add(formatRingEntry(e))
	return nil
}

// ringTimeFormat is the agent's timestamp in the ring: RFC 3339 with
// nanoseconds.
const ringTimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// formatRingEntry renders e as one JSON object, as logrus's JSONFormatter
// would (time, level, msg, the fields; a field named like one of those three
// is kept as "fields.<name>"), without encoding/json: the agent's first log
// line is on the way to its first answer, and under TCG the first use of
// encoding/json's reflection alone costs ~30 ms there. Keys are sorted.
// Values: strings, errors and Stringers (a duration reads "1.5s") as
// strings, booleans and numbers as such, anything else as its %v text.
func formatRingEntry(e *logrus.Entry) []byte {
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := make([]byte, 0, 128+32*len(keys))
	b = append(b, '{')
	for _, k := range keys {
		name := k
		if k == "time" || k == "level" || k == "msg" {
			name = "fields." + k
		}
		b = appendJSONString(b, name)
		b = append(b, ':')
		b = appendJSONValue(b, e.Data[k])
		b = append(b, ',')
	}
	b = append(b, `"level":`...)
	b = appendJSONString(b, e.Level.String())
	b = append(b, `,"msg":`...)
	b = appendJSONString(b, e.Message)
	b = append(b, `,"time":`...)
	// In UTC: formatting in the local zone would load the zone first.
	b = appendJSONString(b, e.Time.UTC().Format(ringTimeFormat))
	return append(b, '}')
}

func appendJSONValue(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...)
	case string:
		return appendJSONString(b, v)
	case error:
		return appendJSONString(b, v.Error())
	case fmt.Stringer:
		return appendJSONString(b, v.String())
	case bool:
		return strconv.AppendBool(b, v)
	case int:
		return strconv.AppendInt(b, int64(v), 10)
	case int32:
		return strconv.AppendInt(b, int64(v), 10)
	case int64:
		return strconv.AppendInt(b, v, 10)
	case uint:
		return strconv.AppendUint(b, uint64(v), 10)
	case uint32:
		return strconv.AppendUint(b, uint64(v), 10)
	case uint64:
		return strconv.AppendUint(b, v, 10)
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return appendJSONString(b, strconv.FormatFloat(v, 'g', -1, 64))
		}
		return strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	return appendJSONString(b, fmt.Sprint(v))
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == '\t':
			b = append(b, '\\', 't')
		case r < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
		default:
			// range yields U+FFFD for each invalid byte.
			b = utf8.AppendRune(b, r)
		}
	}
	return append(b, '"')
}

// consoleHook writes entries at info level and above as short text lines:
// the console is slow when the guest runs without acceleration.
type consoleHook struct {
	mu sync.Mutex // serializes writes to w
	w  io.Writer
	f  logrus.TextFormatter
}

func (h *consoleHook) Levels() []logrus.Level {
	return logrus.AllLevels[:logrus.InfoLevel+1]
}

func (h *consoleHook) Fire(e *logrus.Entry) error {
	b, err := h.f.Format(e)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err = h.w.Write(b)
	return err
}

// discardFormatter keeps logrus from formatting entries for its own output:
// the hooks do all the writing.
type discardFormatter struct{}

func (discardFormatter) Format(*logrus.Entry) ([]byte, error) { return nil, nil }

// newLogger builds the agent's logger: text to console at info level and
// above, JSON into ring at every enabled level.
func newLogger(console io.Writer, ring *logRing, level logrus.Level) *logrus.Logger {
	l := logrus.New()
	l.Out = io.Discard
	l.Formatter = discardFormatter{}
	l.Level = level
	l.AddHook(&ringHook{ring: ring})
	l.AddHook(&consoleHook{w: console, f: logrus.TextFormatter{DisableColors: true, DisableTimestamp: true, DisableQuote: true}})
	return l
}
