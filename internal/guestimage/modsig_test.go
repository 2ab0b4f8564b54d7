package guestimage

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestStripModuleSignature(t *testing.T) {
	body := []byte("\x7fELF module body")
	sig := bytes.Repeat([]byte{0xab}, 40)
	info := make([]byte, moduleSigInfoSize)
	binary.BigEndian.PutUint32(info[8:], uint32(len(sig)))
	signed := append(append(append(append([]byte{}, body...), sig...), info...), moduleSigMagic...)

	badInfo := make([]byte, moduleSigInfoSize)
	binary.BigEndian.PutUint32(badInfo[8:], 1<<20)
	tooLong := append(append(append([]byte{}, body...), badInfo...), moduleSigMagic...)

	for _, tc := range []struct {
		name string
		in   []byte
		want []byte
	}{
		{"signed", signed, body},
		{"unsigned", body, body},
		{"length past the start", tooLong, tooLong},
		{"only magic", []byte(moduleSigMagic), []byte(moduleSigMagic)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := stripModuleSignature(tc.in); !bytes.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
