//go:build linux

package uffd

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/uffd/uffdtest"
)

// envServe makes the test binary act as `hearth _uffd` (for Launch tests).
const envServe = "HEARTH_UFFD_TEST_SERVE"

func TestMain(m *testing.M) {
	uffdtest.RunChildIfRequested()
	if os.Getenv(envServe) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		code := Main(ctx, os.Args[1:], os.Stderr)
		stop()
		os.Exit(code)
	}
	testbin.Main(m)
}
