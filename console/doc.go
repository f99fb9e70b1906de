// Package console manages a VM's console log: the file that receives the
// guest's serial output and the VMM's stderr (vms/<key>/console.log).
//
// The VMM writes the file directly through an O_APPEND descriptor it got
// at launch, so logs survive daemon restarts and stay for post-mortem
// after a crash. Because the writer is another process, the size cap is
// enforced by copy-and-truncate: the current file is copied to
// console.log.1 (older generations shift up to Keep) and truncated in
// place; the VMM's next append lands at the new end. Bytes written between
// the copy and the truncation can be lost — a deliberate trade-off: the
// alternative, a relay process between VMM and file, would stall or kill
// the VMM (SIGPIPE) whenever the relay died.
//
// Tail and Follow read across the rotated generations and notice
// truncation. The package knows nothing about VMs beyond a path.
package console
