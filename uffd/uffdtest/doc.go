//go:build linux

// Package uffdtest is a fake VMM for exercising a userfaultfd page-fault
// server against the real kernel without a VMM: a child process maps guest
// memory, registers it with a userfaultfd, hands the fd and the region
// list to the server exactly as Firecracker does (one sendmsg: JSON data,
// fd in SCM_RIGHTS), then runs steps — touching pages in some order from
// several threads and checking their contents against the memory file,
// dropping ranges with MADV_DONTNEED, moving them with mremap — and
// reports what it did. It also maps the memory file MAP_PRIVATE (like
// Firecracker's File backend) so benchmarks can measure the kernel's own
// faults the same way.
//
// The child is the test binary itself, re-executed: a test binary that
// uses the package calls RunChildIfRequested first thing (TestMain or
// init). Every wait on the server is bounded by Config.Timeout; a child
// whose faults are not served exits with ExitTimeout and says so, instead
// of hanging. The package needs root (or vm.unprivileged_userfaultfd) and
// Linux.
package uffdtest
