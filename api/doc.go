// Package api is hearth's daemon API: JSON over HTTP, served on a unix
// socket (and optionally on TCP behind a bearer token) by `hearth serve`.
//
// Paths are versioned (/v1/...). Every request body is size-limited and
// decoded strictly (unknown fields are refused) and every input is
// validated by the runtime before any side effect. Errors are JSON
// {"error": {"kind", "message", "vm", "snapshot", "vmm"}} with the HTTP
// status derived from the error kind (see StatusOf). The OpenAPI 3
// document describing every route is checked in (openapi.json), served at
// /v1/openapi.json, and kept in sync with the router by a test.
//
// The package owns HTTP: routing, decoding, error mapping, the event
// stream. It holds no VM state of its own; the Runtime does. The Go
// client lives in api/client.
package api
