// Package testbin builds the project's commands for tests and benchmarks:
// each command once per test process, statically (CGO_ENABLED=0, so a
// copy runs inside a jail's chroot), into one temporary directory that
// Cleanup removes. A package that builds binaries calls Main from its
// TestMain, so nothing is left in the temporary directory after its run.
package testbin
