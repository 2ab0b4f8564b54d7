//go:build cgo

package shim

/*
#include <limits.h>
#include <malloc.h>

// hull_keep_break stops the C allocator from lowering the program break
// (trimming the top of its main heap), where it can (glibc); 1 on success.
static int hull_keep_break(void) {
#ifdef M_TRIM_THRESHOLD
	return mallopt(M_TRIM_THRESHOLD, INT_MAX);
#else
	return 1;
#endif
}
*/
import "C"

import "errors"

// keepBreak stops the C allocator, the only code of the process that moves
// the program break, from ever lowering it: glibc trims the top of its
// main heap only past M_TRIM_THRESHOLD, set here beyond any heap (musl,
// whose malloc.h has no M_TRIM_THRESHOLD, never lowers the break).
func keepBreak() error {
	if C.hull_keep_break() != 1 {
		return errors.New("the C allocator refused to keep its heap (mallopt M_TRIM_THRESHOLD)")
	}
	return nil
}
