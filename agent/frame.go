package agent

import (
	"encoding/binary"
	"fmt"
	"io"
)

// FrameType is the first byte of an exec frame.
type FrameType byte

// Exec frame types (see the package documentation).
const (
	// Host to agent.
	FrameStdin    FrameType = 0x01
	FrameStdinEOF FrameType = 0x02
	// Agent to host.
	FrameStarted FrameType = 0x10
	FrameStdout  FrameType = 0x11
	FrameStderr  FrameType = 0x12
	FrameExit    FrameType = 0x13
)

// FrameHeaderSize is the type byte plus the length.
const FrameHeaderSize = 5

func (t FrameType) String() string {
	switch t {
	case FrameStdin:
		return "stdin"
	case FrameStdinEOF:
		return "stdin-eof"
	case FrameStarted:
		return "started"
	case FrameStdout:
		return "stdout"
	case FrameStderr:
		return "stderr"
	case FrameExit:
		return "exit"
	}
	return fmt.Sprintf("frame(0x%02x)", byte(t))
}

// PutFrameHeader writes a header for a payload of n bytes into b[:5].
func PutFrameHeader(b []byte, t FrameType, n int) {
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:FrameHeaderSize], uint32(n))
}

// WriteFrame writes one frame with a single Write, so frames from
// concurrent writers holding a lock never interleave.
func WriteFrame(w io.Writer, t FrameType, p []byte) error {
	if len(p) > MaxFramePayload {
		return fmt.Errorf("%w: frame payload %d > %d", ErrTooLarge, len(p), MaxFramePayload)
	}
	b := make([]byte, FrameHeaderSize+len(p))
	PutFrameHeader(b, t, len(p))
	copy(b[FrameHeaderSize:], p)
	_, err := w.Write(b)
	return err
}

// FrameReader reads frames, reusing one buffer.
type FrameReader struct {
	r   io.Reader
	hdr [FrameHeaderSize]byte
	buf []byte
}

// NewFrameReader reads frames from r.
func NewFrameReader(r io.Reader) *FrameReader { return &FrameReader{r: r} }

// Next returns the next frame. The payload is valid until the next call.
// A clean end of stream between frames is io.EOF; inside one it is
// io.ErrUnexpectedEOF. A length over MaxFramePayload is an error (the
// stream cannot be resynchronised after it).
func (fr *FrameReader) Next() (FrameType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[1:])
	if n > MaxFramePayload {
		return 0, nil, fmt.Errorf("%w: frame %s of %d bytes exceeds %d", ErrProtocol, FrameType(fr.hdr[0]), n, MaxFramePayload)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	p := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return FrameType(fr.hdr[0]), p, nil
}
