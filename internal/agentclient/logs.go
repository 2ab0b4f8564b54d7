package agentclient

import (
	"bufio"
	"encoding/json"
	"io"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// maxLogLine bounds one line of the agent's log.
const maxLogLine = 1 << 20

// forwardLogs re-logs every JSON line read from r through to with
// source=agent, the agent's level and its fields, until r ends. The agent's
// timestamp is kept as agent_time: the guest clock may be off until the
// host sets it.
func forwardLogs(to *log.Entry, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLogLine)
	for sc.Scan() {
		relog(to, sc.Bytes())
	}
}

func relog(to *log.Entry, line []byte) {
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		to.WithField("source", "agent").Info(string(line))
		return
	}
	level := logrus.InfoLevel
	if s, ok := m["level"].(string); ok {
		if l, err := logrus.ParseLevel(s); err == nil {
			level = l
		}
	}
	msg, _ := m["msg"].(string)
	if t, ok := m["time"]; ok {
		m["agent_time"] = t
	}
	delete(m, "level")
	delete(m, "msg")
	delete(m, "time")
	m["source"] = "agent"
	if level == logrus.PanicLevel || level == logrus.FatalLevel {
		// Re-logging at these levels would panic or exit the host.
		level = logrus.ErrorLevel
	}
	to.WithFields(m).Log(level, msg)
}
