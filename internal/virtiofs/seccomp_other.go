//go:build !amd64 && !arm64

package virtiofs

func seccompRules() (arch uint32, rules []rule, ok bool) { return 0, nil, false }
