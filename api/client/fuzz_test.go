package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/api"
)

// FuzzExecStream: whatever body a daemon (or something posing as one)
// answers an exec with, the client returns, in bounded time, either the
// exit status of a well-formed stream (having passed on exactly its
// output) or a typed error; it never panics or hangs.
func FuzzExecStream(f *testing.F) {
	frame := func(stream byte, p string) []byte {
		b := []byte{stream, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], uint32(len(p)))
		return append(b, p...)
	}
	f.Add(bytes.Join([][]byte{frame(api.FrameStdout, "hi\n"), frame(api.FrameStderr, "oops"), frame(api.FrameExit, `{"exit_code":3}`)}, nil))
	f.Add(frame(api.FrameStdout, "no exit"))
	f.Add(frame(api.FrameExit, `{"exit_code":`))
	f.Add([]byte{api.FrameStdout, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{api.FrameStdout, 0, 0, 0, 9, 'x'})
	f.Add(bytes.Join([][]byte{frame(9, "unknown stream"), frame(api.FrameExit, `{"exit_code":0,"signal":"SIGTERM"}`)}, nil))

	var body []byte
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", api.ExecContentType)
		w.Write(body)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(l)
	f.Cleanup(func() { srv.Close() })
	c := NewTCP(l.Addr().String(), "")
	f.Fuzz(func(t *testing.T, b []byte) {
		body = b
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var stdout, stderr bytes.Buffer
		st, err := c.Exec(ctx, "vm", api.ExecRequest{Args: []string{"true"}}, &stdout, &stderr)
		if ctx.Err() != nil {
			t.Fatalf("exec ran into its deadline: %v", err)
		}
		// The expected outcome, read frame by frame.
		var wantOut, wantErr bytes.Buffer
		r := bytes.NewReader(b)
		wantExit := false
		for {
			stream, p, ferr := api.ReadFrame(r)
			if ferr != nil {
				break
			}
			if stream == api.FrameExit {
				wantExit = true
				break
			}
			switch stream {
			case api.FrameStdout:
				wantOut.Write(p)
			case api.FrameStderr:
				wantErr.Write(p)
			}
		}
		if err != nil {
			if hearth.KindOf(err) != hearth.KindGuestMetadata {
				t.Fatalf("error of kind %s: %v", hearth.KindOf(err), err)
			}
			return
		}
		if !wantExit || st == nil {
			t.Fatalf("status %+v from a stream without a valid exit frame", st)
		}
		if !bytes.Equal(stdout.Bytes(), wantOut.Bytes()) || !bytes.Equal(stderr.Bytes(), wantErr.Bytes()) {
			t.Fatalf("output %q/%q, want %q/%q", stdout.Bytes(), stderr.Bytes(), wantOut.Bytes(), wantErr.Bytes())
		}
	})
}
