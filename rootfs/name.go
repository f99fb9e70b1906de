package rootfs

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/hearth-vm/hearth/rootfs/digest"
)

// Errors a caller can test with errors.Is. The runtime maps ErrInvalidName
// to its InvalidArgument kind, ErrNotFound and ErrExists to its own
// not-found/exists handling, and *IntegrityError (errors.As) to Integrity.
var (
	ErrInvalidName = errors.New("invalid image name")
	ErrNotFound    = errors.New("image not found")
	ErrExists      = errors.New("image already exists")
	// ErrShrink: a clone or resize was asked to make an image smaller,
	// which would lose data. Reported before anything is changed.
	ErrShrink = errors.New("resize would shrink the filesystem")
	// ErrNoSpace: the destination filesystem has less free space than a
	// copy needs. Reported before copying. It matches syscall.ENOSPC too.
	ErrNoSpace = errors.New("not enough free space")
	// ErrAgent: the hearth-agent binary is missing or unsuitable.
	ErrAgent = errors.New("unusable hearth-agent binary")
)

// IntegrityError is digest.IntegrityError: a file whose content does not
// match the digest in its manifest, naming the file and both digests.
type IntegrityError = digest.IntegrityError

// nameRE is the image name grammar shared with the runtime's
// ValidateImageName: lower-case, so names are case-insensitively unique,
// and without "/" so a name is always one directory under images/.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName checks an image name: 1–63 characters of [a-z0-9._-]
// starting with a letter or digit, without "..". Every entry point
// validates before touching the filesystem, so a name can never escape the
// catalog directory.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w %q: want 1-63 characters of [a-z0-9._-] starting with a letter or digit, without \"..\"", ErrInvalidName, name)
	}
	return nil
}
