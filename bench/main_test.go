package bench

import (
	"testing"

	"github.com/hearth-vm/hearth/internal/testbin"
)

// TestMain removes the binaries the benchmarks built.
func TestMain(m *testing.M) { testbin.Main(m) }
