// Package ocispec reads the OCI runtime spec of a bundle (config.json), with
// errors that say where a malformed file goes wrong.
package ocispec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ReadSpec reads a bundle's config.json. A malformed file is an
// InvalidArgument error that names the file and the line and column of the
// problem.
func ReadSpec(bundle string) (*specs.Spec, error) {
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the bundle config: %w", err)
	}
	var spec specs.Spec
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&spec); err != nil {
		var (
			syn *json.SyntaxError
			typ *json.UnmarshalTypeError
		)
		switch {
		case errors.As(err, &syn):
			line, col := position(b, syn.Offset)
			return nil, fmt.Errorf("%s:%d:%d: malformed JSON: %w: %w", path, line, col, err, errdefs.ErrInvalidArgument)
		case errors.As(err, &typ):
			line, col := position(b, typ.Offset)
			return nil, fmt.Errorf("%s:%d:%d: %w: %w", path, line, col, err, errdefs.ErrInvalidArgument)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("%s: malformed JSON: unexpected end of file: %w", path, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("%s: %w: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: malformed JSON: data after the top-level object: %w", path, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

// position turns a byte offset into a 1-based line and column.
func position(b []byte, off int64) (line, col int) {
	off = min(max(off, 0), int64(len(b)))
	before := b[:off]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}
