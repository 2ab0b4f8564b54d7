package shim

import (
	"fmt"
	"os"

	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hull-runtime/hull/internal/config"
)

// ConfigEnv names the configuration file when the runtime options do not:
// containerd passes its environment to the shim.
const ConfigEnv = "HULL_CONFIG"

// configPath returns the configuration file the task's runtime options name
// (runtimeoptions.v1.Options{ConfigPath}, the type CRI sends for
// runtimes other than runc), else $HULL_CONFIG, else "" for config.Load's
// search.
func configPath(opts *anypb.Any) (string, error) {
	if opts != nil && opts.GetTypeUrl() != "" {
		v, err := typeurl.UnmarshalAny(opts)
		if err != nil {
			return "", fmt.Errorf("decoding runtime options: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		o, ok := v.(*runtimeoptions.Options)
		if !ok {
			return "", fmt.Errorf("runtime options of type %s are not hull's (runtimeoptions.v1.Options): %w", opts.GetTypeUrl(), errdefs.ErrInvalidArgument)
		}
		if o.ConfigPath != "" {
			return o.ConfigPath, nil
		}
	}
	return os.Getenv(ConfigEnv), nil
}

// loadConfig loads the configuration the runtime options name.
func loadConfig(opts *anypb.Any) (*config.Config, error) {
	path, err := configPath(opts)
	if err != nil {
		return nil, err
	}
	c, err := config.Load(path)
	if err != nil {
		return nil, fmt.Errorf("loading hull configuration: %w", err)
	}
	return c, nil
}
