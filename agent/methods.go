package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"time"
)

// Ping checks that the agent answers and accepts the token.
func (c *Client) Ping(ctx context.Context) error {
	var p Pong
	return c.jsonCall(ctx, "GET", "/v1/ping", nil, nil, &p, true)
}

// WaitReady pings until the agent answers or ctx ends: the Dialer's own
// retries cover a guest that is not listening yet, this covers a ping
// that fails for another transient reason (a session cut during boot).
// An unauthorized answer ends the wait at once.
func (c *Client) WaitReady(ctx context.Context) error {
	backoff := 10 * time.Millisecond
	for {
		err := c.Ping(ctx)
		if err == nil {
			return nil
		}
		var ae *Error
		if errors.As(err, &ae) || ctx.Err() != nil {
			// The agent answered: it is up, and retrying will not
			// change its answer.
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent: wait ready: %w (last error: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// Info returns the agent's and the guest's description.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var in Info
	if err := c.jsonCall(ctx, "GET", "/v1/info", nil, nil, &in, true); err != nil {
		return nil, err
	}
	return &in, nil
}

// Env returns the agent's stored environment (what exec'd processes get
// on top of the agent's base environment).
func (c *Client) Env(ctx context.Context) (map[string]string, error) {
	var r EnvResponse
	if err := c.jsonCall(ctx, "GET", "/v1/env", nil, nil, &r, true); err != nil {
		return nil, err
	}
	return r.Env, nil
}

// SetEnv merges env into the agent's stored environment: keys absent
// from env are kept, an empty value deletes its key. It returns the whole
// environment afterwards. Keys and values are validated before sending.
func (c *Client) SetEnv(ctx context.Context, env map[string]string) (map[string]string, error) {
	if err := ValidateEnv(env); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var r EnvResponse
	if err := c.jsonCall(ctx, "POST", "/v1/env", nil, EnvRequest{Env: env}, &r, true); err != nil {
		return nil, err
	}
	return r.Env, nil
}

// SetSecret writes value to the secret file name (mode 0600, atomically:
// a reader sees the old or the new value, never a mix).
func (c *Client) SetSecret(ctx context.Context, name string, value []byte) error {
	if err := ValidateSecretName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if value == nil {
		value = []byte{}
	}
	cl := &call{method: "PUT", path: "/v1/secrets/" + name, body: value, ctype: "application/octet-stream", idempotent: true}
	resp, err := c.roundTrip(ctx, cl)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// DeleteSecret removes a secret; a missing one is fs.ErrNotExist.
func (c *Client) DeleteSecret(ctx context.Context, name string) error {
	if err := ValidateSecretName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return c.jsonCall(ctx, "DELETE", "/v1/secrets/"+name, nil, nil, nil, true)
}

// Secrets lists the secret names, sorted.
func (c *Client) Secrets(ctx context.Context) ([]string, error) {
	var r SecretList
	if err := c.jsonCall(ctx, "GET", "/v1/secrets", nil, nil, &r, true); err != nil {
		return nil, err
	}
	sort.Strings(r.Names)
	return r.Names, nil
}

// PowerOff asks the guest to shut down. The agent answers first, then
// acts, so the connection drops shortly after this returns.
func (c *Client) PowerOff(ctx context.Context) error {
	return c.jsonCall(ctx, "POST", "/v1/power", nil, PowerRequest{Action: PowerOff}, nil, false)
}

// Reboot asks the guest to reboot (on Firecracker with reboot=k the VMM
// then exits: this is the clean way to stop a Firecracker guest).
func (c *Client) Reboot(ctx context.Context) error {
	return c.jsonCall(ctx, "POST", "/v1/power", nil, PowerRequest{Action: Reboot}, nil, false)
}

// AddEntropy mixes data into the guest's random pool (credited as
// entropy when the agent may do so).
func (c *Client) AddEntropy(ctx context.Context, data []byte) (*EntropyResponse, error) {
	if len(data) == 0 || len(data) > MaxEntropy {
		return nil, fmt.Errorf("%w: entropy must be 1 to %d bytes", ErrInvalid, MaxEntropy)
	}
	cl := &call{method: "POST", path: "/v1/entropy", body: data, ctype: "application/octet-stream", idempotent: true}
	resp, err := c.roundTrip(ctx, cl)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r EntropyResponse
	if err := decodeJSON(resp, &r); err != nil {
		return nil, fmt.Errorf("agent: %s: %w", cl.op(), err)
	}
	return &r, nil
}

// MaxEntropy is the most bytes one AddEntropy call carries.
const MaxEntropy = 4096

// Reseed sends 512 fresh random bytes from the host: after a snapshot
// restore every clone starts with the same pool state.
func (c *Client) Reseed(ctx context.Context) error {
	b := make([]byte, 512)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("agent: reseed: %w", err)
	}
	_, err := c.AddEntropy(ctx, b)
	return err
}

// SetClock sets the guest's realtime clock to t and returns how far it
// moved. A restored snapshot's clock is as old as the snapshot.
func (c *Client) SetClock(ctx context.Context, t time.Time) (time.Duration, error) {
	var r ClockResponse
	if err := c.jsonCall(ctx, "POST", "/v1/clock", nil, ClockRequest{UnixNano: t.UnixNano()}, &r, false); err != nil {
		return 0, err
	}
	return r.Adjusted, nil
}

// SetHostname sets the guest's hostname (a clone takes its own: the
// snapshot carries its source's).
func (c *Client) SetHostname(ctx context.Context, name string) error {
	if err := ValidateHostname(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return c.jsonCall(ctx, "POST", "/v1/hostname", nil, HostnameRequest{Hostname: name}, nil, true)
}

// RotateToken replaces the agent's token with newToken (authenticated
// with the current one) and switches the client to it.
func (c *Client) RotateToken(ctx context.Context, newToken string) error {
	if err := ValidateToken(newToken); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := c.jsonCall(ctx, "POST", "/v1/token", nil, TokenRequest{Token: newToken}, nil, false); err != nil {
		return err
	}
	c.SetToken(newToken)
	return nil
}

// AfterRestore is what the runtime calls once a VM restored from a
// snapshot runs: reconnect (the snapshot reset every vsock connection),
// set the guest clock to now, reseed its entropy pool, and, if newToken
// is not empty, give this clone its own token.
func (c *Client) AfterRestore(ctx context.Context, newToken string) error {
	if err := c.Reconnect(ctx); err != nil {
		return err
	}
	if _, err := c.SetClock(ctx, time.Now()); err != nil {
		return err
	}
	if err := c.Reseed(ctx); err != nil {
		return err
	}
	if newToken != "" {
		return c.RotateToken(ctx, newToken)
	}
	return nil
}

// query builds url.Values from pairs.
func query(kv ...string) url.Values {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q
}
