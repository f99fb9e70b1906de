// Package bench holds hearth's benchmarks. Each measures a capability
// against a baseline measured in the same run (the kernel's own page
// faults, a shell-out, a copy instead of a reflink, a serial loop …), so
// that results are ratios that hold from machine to machine rather than
// absolute numbers that do not. Run them with `go test -bench . ./bench/`
// (`make bench`); benchmarks that need root skip without it. Tests never
// assert timings; benchmarks report them.
package bench
