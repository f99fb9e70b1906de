package agent

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Limits shared by both ends, so the client can refuse early what the
// agent would refuse.
const (
	MaxEnvKey       = 256
	MaxEnvValue     = 128 << 10
	MaxSecretName   = 255
	MaxPath         = 4096
	MinToken        = 8
	MaxToken        = 512
	MaxFramePayload = 1 << 20
	MaxArgs         = 4096
)

// ValidateEnvKey checks a key like the seed did: [A-Za-z_][A-Za-z0-9_]*.
func ValidateEnvKey(k string) error {
	if k == "" {
		return errors.New("env key is empty")
	}
	if len(k) > MaxEnvKey {
		return fmt.Errorf("env key longer than %d bytes", MaxEnvKey)
	}
	if c := k[0]; !(c == '_' || isAlpha(c)) {
		return fmt.Errorf("env key %q must start with a letter or '_'", k)
	}
	for i := 1; i < len(k); i++ {
		if c := k[i]; !(c == '_' || isAlpha(c) || isDigit(c)) {
			return fmt.Errorf("env key %q has invalid character %q", k, c)
		}
	}
	return nil
}

// ValidateEnvValue refuses values that would corrupt the K=V-per-line
// env file or a process environment (newline, NUL).
func ValidateEnvValue(k, v string) error {
	if len(v) > MaxEnvValue {
		return fmt.Errorf("env value of %s longer than %d bytes", k, MaxEnvValue)
	}
	if i := strings.IndexAny(v, "\n\r\x00"); i >= 0 {
		return fmt.Errorf("env value of %s contains a newline or NUL", k)
	}
	return nil
}

// ValidateEnv checks every key and value of an update.
func ValidateEnv(env map[string]string) error {
	for k, v := range env {
		if err := ValidateEnvKey(k); err != nil {
			return err
		}
		if err := ValidateEnvValue(k, v); err != nil {
			return err
		}
	}
	return nil
}

// ValidateExec checks an exec request as the agent will: both ends call
// it, so the host refuses early (and the daemon answers 400) what the
// agent would refuse.
func ValidateExec(req *ExecRequest) error {
	if len(req.Args) == 0 {
		return errors.New("exec needs args")
	}
	if len(req.Args) > MaxArgs {
		return fmt.Errorf("exec has more than %d args", MaxArgs)
	}
	for _, a := range req.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("exec args contain NUL")
		}
	}
	if req.Args[0] == "" {
		return errors.New("exec args[0] is empty")
	}
	if err := ValidateEnv(req.Env); err != nil {
		return err
	}
	if len(req.Dir) > MaxPath {
		return fmt.Errorf("exec dir longer than %d bytes", MaxPath)
	}
	if req.Dir != "" && (!path.IsAbs(req.Dir) || strings.IndexByte(req.Dir, 0) >= 0) {
		return fmt.Errorf("exec dir %q is not an absolute path", req.Dir)
	}
	if req.TimeoutMS < 0 {
		return errors.New("exec timeout_ms is negative")
	}
	return nil
}

// ValidateSecretName checks a secret name like the seed did:
// [A-Za-z0-9_-]+ (so no dots, slashes, spaces or "..").
func ValidateSecretName(n string) error {
	if n == "" {
		return errors.New("secret name is empty")
	}
	if len(n) > MaxSecretName {
		return fmt.Errorf("secret name longer than %d bytes", MaxSecretName)
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; !(c == '_' || c == '-' || isAlpha(c) || isDigit(c)) {
			return fmt.Errorf("secret name %q has invalid character %q (allowed: A-Z a-z 0-9 _ -)", n, c)
		}
	}
	return nil
}

// ValidateHostname checks a hostname: 1 to 64 bytes of dot-separated
// labels of letters, digits and inner dashes (what sethostname takes and
// resolvers accept).
func ValidateHostname(h string) error {
	if h == "" || len(h) > 64 {
		return fmt.Errorf("hostname %q must be 1 to 64 bytes", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("hostname %q has an empty or dash-edged label", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c == '-' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
				return fmt.Errorf("hostname %q has invalid character %q", h, c)
			}
		}
	}
	return nil
}

// ValidateToken checks a token: printable ASCII without spaces, so it
// fits a kernel command line and an Authorization header unchanged.
func ValidateToken(t string) error {
	if len(t) < MinToken || len(t) > MaxToken {
		return fmt.Errorf("token must be %d to %d bytes long", MinToken, MaxToken)
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c > '~' {
			return errors.New("token must be printable ASCII without spaces")
		}
	}
	return nil
}

// CleanPath validates a guest path from a request and returns it cleaned
// (abs, starting with "/") and relative to the root ("." for the root
// itself). It refuses rather than cleans away "..": a request naming
// "/a/../etc" is a mistake or an attack either way.
func CleanPath(p string) (abs, rel string, err error) {
	switch {
	case p == "":
		return "", "", errors.New("path is empty")
	case len(p) > MaxPath:
		return "", "", fmt.Errorf("path longer than %d bytes", MaxPath)
	case strings.IndexByte(p, 0) >= 0:
		return "", "", errors.New("path contains NUL")
	case p[0] != '/':
		return "", "", fmt.Errorf("path %q is not absolute", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return "", "", fmt.Errorf("path %q contains \"..\"", p)
		}
	}
	abs = path.Clean(p)
	rel = strings.TrimPrefix(abs, "/")
	if rel == "" {
		rel = "."
	}
	return abs, rel, nil
}

func isAlpha(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
