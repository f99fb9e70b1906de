package hearth_test

import (
	"testing"

	"github.com/hearth-vm/hearth/internal/testbin"
)

// TestMain removes the binaries the tests built (simulator, agent, hearth).
func TestMain(m *testing.M) { testbin.Main(m) }
