// Command hearth is the command-line interface to hearth: it inspects a
// state dir (ps, inspect), runs the lifecycle demo, and — as issues land —
// serves the daemon API and drives VMs through it.
package main
