// Command hearth-fcsim is the Firecracker simulator (see internal/fcsim):
// it accepts Firecracker's command line and serves its API, and acts as the
// jailer when invoked as "jailer" or with "jailer" as its first argument.
package main

import (
	"os"

	"github.com/hearth-vm/hearth/internal/fcsim"
)

func main() {
	os.Exit(fcsim.Main(os.Args))
}
