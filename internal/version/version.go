// Package version holds the build's version and commit, set by the Makefile
// through -ldflags -X.
package version

var (
	// Version is the release version, or "dev" for an untagged build.
	Version = "dev"
	// Commit is the git commit the binary was built from.
	Commit = "unknown"
)
