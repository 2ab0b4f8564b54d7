// Package config loads hull's configuration.toml: built-in defaults, the file
// found at the first of the standard locations (or a path given explicitly),
// and validation with errors that name the offending key.
//
// The defaults are written once, in Defaults; the file shipped as
// config/configuration.toml and docs/configuration.md describe the same values,
// and a test keeps the shipped file equal to Defaults.
package config
