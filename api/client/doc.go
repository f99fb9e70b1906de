// Package client is the Go client of hearth's daemon API. Its methods
// mirror hearth.Runtime's, and errors come back as *hearth.Error with the
// server's kind, so code written against the library works against the
// daemon unchanged (errors.Is(err, hearth.ErrVMNotFound) and friends).
package client
