package api

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/hearth-vm/hearth/agent"
)

// FuzzExecFraming: output written through the server's frame writers
// (split at arbitrary points, stdout and stderr interleaved, chunks over
// MaxFrame cut into several frames) and closed by an exit frame reads
// back through ReadFrame as the same two byte streams and the same exit
// status; and whatever bytes arrive instead, ReadFrame ends in an error
// without ever returning (or allocating for) a frame over MaxFrame.
func FuzzExecFraming(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), []byte{3, 1, 0, 2}, int32(0), uint16(0))
	f.Add([]byte{}, []byte{}, int32(137), uint16(3))
	f.Add(bytes.Repeat([]byte{0xff}, 64), []byte{255, 255, 17}, int32(-1), uint16(9))
	f.Add([]byte{FrameStdout, 0x7f, 0xff, 0xff, 0xff}, []byte{}, int32(0), uint16(5))
	f.Fuzz(func(t *testing.T, data, splits []byte, code int32, cut uint16) {
		// Arbitrary bytes as a response body.
		r := bytes.NewReader(data)
		for {
			_, p, err := ReadFrame(r)
			if err != nil {
				break
			}
			if len(p) > MaxFrame {
				t.Fatalf("frame of %d bytes", len(p))
			}
		}

		// Round trip. Odd split bytes go to stderr, and the first split
		// is sometimes stretched past MaxFrame.
		var wire bytes.Buffer
		mu := &sync.Mutex{}
		out := frameWriter{mu: mu, w: &wire, stream: FrameStdout}
		errw := frameWriter{mu: mu, w: &wire, stream: FrameStderr}
		var wantOut, wantErr bytes.Buffer
		rest := data
		for i, s := range splits {
			n := min(int(s), len(rest))
			chunk := rest[:n]
			if i == 0 && s == 255 {
				chunk = bytes.Repeat(rest[:n], MaxFrame/max(n, 1)+2)
			}
			rest = rest[n:]
			w, want := out, &wantOut
			if s%2 == 1 {
				w, want = errw, &wantErr
			}
			if n, err := w.Write(chunk); err != nil || n != len(chunk) {
				t.Fatalf("frame writer: %d of %d, %v", n, len(chunk), err)
			}
			want.Write(chunk)
		}
		st := agent.ExitStatus{ExitCode: int(code), Signal: "SIGKILL"[:int(cut)%8]}
		b, _ := json.Marshal(st)
		if err := writeFrame(&wire, FrameExit, b); err != nil {
			t.Fatal(err)
		}
		all := wire.Bytes()
		var gotOut, gotErr bytes.Buffer
		r = bytes.NewReader(all)
		var exit *agent.ExitStatus
		for exit == nil {
			stream, p, err := ReadFrame(r)
			if err != nil {
				t.Fatalf("reading back: %v", err)
			}
			switch stream {
			case FrameStdout:
				gotOut.Write(p)
			case FrameStderr:
				gotErr.Write(p)
			case FrameExit:
				exit = new(agent.ExitStatus)
				if err := json.Unmarshal(p, exit); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("stream %d", stream)
			}
		}
		if r.Len() != 0 || *exit != st || !bytes.Equal(gotOut.Bytes(), wantOut.Bytes()) || !bytes.Equal(gotErr.Bytes(), wantErr.Bytes()) {
			t.Fatalf("round trip: exit %+v want %+v, %d/%d stdout, %d/%d stderr bytes, %d left", exit, st,
				gotOut.Len(), wantOut.Len(), gotErr.Len(), wantErr.Len(), r.Len())
		}
		// A cut stream: whole frames before the cut, then EOF exactly at
		// a frame boundary, ErrUnexpectedEOF (or a truncation error)
		// inside one — never a short frame taken as whole.
		at := int(cut) % (len(all) + 1)
		r = bytes.NewReader(all[:at])
		for {
			_, _, err := ReadFrame(r)
			if err == nil {
				continue
			}
			if (err == io.EOF) != frameBoundary(all, at) || (err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF)) {
				t.Fatalf("cut at %d: %v", at, err)
			}
			break
		}
	})
}

// frameBoundary reports whether offset at of a well-formed frame stream
// falls between two frames.
func frameBoundary(all []byte, at int) bool {
	off := 0
	for off < at {
		if len(all)-off < 5 {
			return false
		}
		off += 5 + int(binary.BigEndian.Uint32(all[off+1:]))
	}
	return off == at
}
