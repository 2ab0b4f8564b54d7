package virtiofs

// Lookup returns the virtiofsd that Start runs when Config.Binary is
// empty (the first executable of Binaries, else virtiofsd on PATH), so that
// host checks look where the runtime looks.
func Lookup() (string, error) {
	return lookBinary("")
}
