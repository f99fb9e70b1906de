package main

import (
	"strings"
	"testing"
)

func TestJailCmdRejectsBadArgs(t *testing.T) {
	cmd := jailCmd()
	if !cmd.Hidden {
		t.Fatal("_jail must be hidden")
	}
	cases := [][]string{
		nil,
		{"--chroot", "/j/root", "--uid", "0", "--gid", "0", "--", "/usr/bin/qemu-system-x86_64"},
		{"--chroot", "/j/root", "--uid", "7000000", "--gid", "7000000"},
		{"--bogus"},
	}
	for _, args := range cases {
		cmd.SetArgs(args)
		err := cmd.RunE(cmd, args)
		if err == nil {
			t.Fatalf("%v accepted", args)
		}
		if strings.Contains(err.Error(), "exec ") {
			t.Fatalf("%v got as far as exec: %v", args, err)
		}
	}
}
