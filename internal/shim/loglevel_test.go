package shim

import (
	"testing"

	"github.com/sirupsen/logrus"
)

func TestApplyLogLevel(t *testing.T) {
	for _, tc := range []struct {
		name    string
		current logrus.Level // info: started without -debug; debug: with it
		config  string
		want    logrus.Level
	}{
		{"config quieter than the default", logrus.InfoLevel, "warn", logrus.WarnLevel},
		{"config louder than the default", logrus.InfoLevel, "debug", logrus.DebugLevel},
		{"config trace", logrus.InfoLevel, "trace", logrus.TraceLevel},
		{"containerd's -debug beats a quieter config", logrus.DebugLevel, "error", logrus.DebugLevel},
		{"trace beats containerd's -debug", logrus.DebugLevel, "trace", logrus.TraceLevel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := logrus.New()
			l.SetLevel(tc.current)
			if err := applyLogLevel(l, tc.config); err != nil {
				t.Fatal(err)
			}
			if got := l.GetLevel(); got != tc.want {
				t.Errorf("level %s, want %s", got, tc.want)
			}
		})
	}
	t.Run("unknown level", func(t *testing.T) {
		if err := applyLogLevel(logrus.New(), "loud"); err == nil {
			t.Error("no error for an unknown level")
		}
	})
}
