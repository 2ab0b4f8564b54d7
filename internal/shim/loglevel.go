package shim

import (
	"github.com/sirupsen/logrus"
)

// applyLogLevel sets the shim's logger to the configuration's
// runtime.log_level. containerd starts the shim with -debug when it runs
// at debug level itself; the more verbose of the two wins, so a debugging
// containerd still gets the shim's debug lines.
func applyLogLevel(logger *logrus.Logger, level string) error {
	l, err := logrus.ParseLevel(level)
	if err != nil {
		return err
	}
	if l > logger.GetLevel() || logger.GetLevel() < logrus.DebugLevel {
		logger.SetLevel(l)
	}
	return nil
}
