package hypervisor

import "regexp"

// diskSerialPattern is what a disk's serial may be: virtio-blk hands the
// guest 20 bytes of it, and the guest finds the disk by it.
var diskSerialPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)

// ValidDiskSerial tells whether s may be a disk's serial
// (BlockDevice.Serial): 1 to 20 letters, digits, '_' or '-'. The driver
// that sets it and the agent that looks the disk up by it both check it.
func ValidDiskSerial(s string) bool { return diskSerialPattern.MatchString(s) }
