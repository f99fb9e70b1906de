// Package looptest gives tests and benchmarks a small real filesystem of
// a chosen type (XFS with reflink, btrfs, ext4) on a loop device, mounted
// in a temporary directory and torn down — unmounted, loop device
// detached, image deleted — in t.Cleanup. It needs root and the
// filesystem's mkfs; without them the test is skipped with a message.
//
// It is test support only; no production code imports it.
package looptest
