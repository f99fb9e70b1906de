package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

const (
	helloMagic = "HEARTH-AGENT/"
	// maxHelloLine bounds one hello line: magic, version, word, nonce.
	maxHelloLine = 128
	// MaxHelloDiscard bounds the stale bytes either side skips before the
	// line it waits for.
	MaxHelloDiscard = 1 << 20
)

// bufferedConn is a net.Conn whose reads go through the reader that
// consumed the hello, so bytes it buffered past the hello are not lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// ClientHandshake performs the host side of the hello on conn and returns
// the connection to run the session over. ctx bounds the exchange.
func ClientHandshake(ctx context.Context, conn net.Conn) (net.Conn, error) {
	var nb [8]byte
	_, _ = rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, fmt.Errorf("hello: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(conn, "%s%d %s\n", helloMagic, ProtocolVersion, nonce); err != nil {
		return nil, fmt.Errorf("hello: write: %w", ctxErr(ctx, err))
	}
	br := bufio.NewReaderSize(conn, 4096)
	okLine := fmt.Appendf(nil, "%s%d OK %s", helloMagic, ProtocolVersion, nonce)
	unsupported := fmt.Appendf(nil, "%s%d UNSUPPORTED %s", helloMagic, ProtocolVersion, nonce)
	var got int // 1 ok, 2 unsupported
	err := scanLines(br, MaxHelloDiscard, func(line []byte) bool {
		switch {
		case bytes.HasSuffix(line, okLine):
			got = 1
		case bytes.HasSuffix(line, unsupported):
			got = 2
		}
		return got != 0
	})
	if err != nil {
		return nil, fmt.Errorf("hello: %w", ctxErr(ctx, err))
	}
	if got == 2 {
		return nil, fmt.Errorf("%w: agent does not support protocol version %d", ErrProtocol, ProtocolVersion)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("hello: %w", err)
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// ServerHandshake performs the agent side of the hello on rw: it skips
// anything before a hello line, answers it, and returns a reader to use
// for the rest of the stream (it may hold bytes read past the hello).
// Deadlines, if any, are the caller's to set on the underlying stream.
func ServerHandshake(rw io.ReadWriter) (*bufio.Reader, error) {
	br := bufio.NewReaderSize(rw, 4096)
	var nonce []byte
	var version int
	err := scanLines(br, MaxHelloDiscard, func(line []byte) bool {
		v, n, ok := parseHello(line)
		if ok {
			version, nonce = v, n
		}
		return ok
	})
	if err != nil {
		return nil, fmt.Errorf("hello: %w", err)
	}
	word := "OK"
	if version != ProtocolVersion {
		word = "UNSUPPORTED"
	}
	if _, err := fmt.Fprintf(rw, "%s%d %s %s\n", helloMagic, ProtocolVersion, word, nonce); err != nil {
		return nil, fmt.Errorf("hello: write: %w", err)
	}
	if version != ProtocolVersion {
		return nil, fmt.Errorf("%w: client asked for version %d", ErrProtocol, version)
	}
	return br, nil
}

// parseHello finds "HEARTH-AGENT/<v> <hex nonce>" at the end of line
// (stale bytes may precede it on the same line).
func parseHello(line []byte) (version int, nonce []byte, ok bool) {
	i := bytes.LastIndex(line, []byte(helloMagic))
	if i < 0 {
		return 0, nil, false
	}
	rest := line[i+len(helloMagic):]
	sp := bytes.IndexByte(rest, ' ')
	if sp <= 0 || sp > 4 {
		return 0, nil, false
	}
	v, err := strconv.Atoi(string(rest[:sp]))
	if err != nil || v <= 0 {
		return 0, nil, false
	}
	nonce = rest[sp+1:]
	if len(nonce) == 0 || len(nonce) > 64 {
		return 0, nil, false
	}
	for _, c := range nonce {
		if !(isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) {
			return 0, nil, false
		}
	}
	return v, bytes.Clone(nonce), true
}

// scanLines feeds match each '\n'-terminated line (without the newline,
// at most the last maxHelloLine bytes of it) until match accepts one.
// It gives up after maxDiscard bytes.
func scanLines(br *bufio.Reader, maxDiscard int, match func(line []byte) bool) error {
	line := make([]byte, 0, 2*maxHelloLine)
	for n := 0; ; n++ {
		if n > maxDiscard {
			return fmt.Errorf("%w: no hello in the first %d bytes", ErrProtocol, maxDiscard)
		}
		c, err := br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("peer closed the stream: %w", io.ErrUnexpectedEOF)
			}
			return err
		}
		if c == '\n' {
			l := bytes.TrimSuffix(line, []byte{'\r'})
			if match(l) {
				return nil
			}
			line = line[:0]
			continue
		}
		if len(line) == cap(line) {
			// Keep only the tail: a hello is never longer than that.
			line = line[:copy(line, line[len(line)-maxHelloLine:])]
		}
		line = append(line, c)
	}
}

// ctxErr attributes an I/O error to ctx when ctx caused it. The
// connection's deadline is ctx's, and may fire a moment before ctx does.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl.Add(-time.Millisecond)) {
		return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return err
}
