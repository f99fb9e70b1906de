// Package e2e holds hearth's end-to-end tests with real guests: the QEMU
// backend (TCG on these machines) booting the default image built from
// Debian packages, driven through the hearth binary as an operator would.
// The tests need root, qemu-system-x86_64 and the Debian package mirror
// (for the image build); they skip with a message when one is missing.
package e2e
