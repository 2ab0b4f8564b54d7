package guestimage

import (
	"bytes"
	"encoding/binary"
)

// moduleSigMagic ends a kernel module that carries an appended signature.
const moduleSigMagic = "~Module signature appended~\n"

// moduleSigInfoSize is the size of struct module_signature, which sits
// between the signature and the magic; its last four bytes are the
// signature's length, big-endian.
const moduleSigInfoSize = 12

// stripModuleSignature returns the module without its appended signature,
// or the module unchanged when it has none or the trailer does not add up.
func stripModuleSignature(ko []byte) []byte {
	if !bytes.HasSuffix(ko, []byte(moduleSigMagic)) {
		return ko
	}
	end := len(ko) - len(moduleSigMagic)
	if end < moduleSigInfoSize {
		return ko
	}
	info := ko[end-moduleSigInfoSize : end]
	sigLen := int(binary.BigEndian.Uint32(info[8:]))
	start := end - moduleSigInfoSize - sigLen
	if sigLen <= 0 || start < 0 {
		return ko
	}
	return ko[:start]
}
