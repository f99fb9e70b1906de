// Package proc starts, adopts, watches and stops the long-lived processes
// hearth supervises (VMMs, page-fault servers).
//
// A process is identified by its pid *and* its start time (field 22 of
// /proc/<pid>/stat), so a recorded process is never confused with an
// unrelated one that reused its pid. Processes are started in their own
// session with their output going to a file, never to a pipe held by the
// caller, so they survive the daemon that started them. Exit is observed
// through a pidfd (for children and adopted processes alike), and signals
// are sent through the pidfd, which cannot hit a recycled pid.
//
// The package owns process lifecycle only; it knows nothing about VMs.
package proc
