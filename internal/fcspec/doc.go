// Package fcspec is the pinned Firecracker API description (firecracker.yaml,
// Swagger 2.0, API 1.17.0-dev) embedded in the binary, with a router and a
// request-body validator built from it.
//
// It owns the question "is this request well formed for Firecracker?" and
// nothing else: state rules (pre-boot only calls, paused-only snapshots, path
// id equal to body id, files that must exist) belong to the simulator
// (internal/fcsim) and to the typed client (vmm/firecracker), which use this
// package for the shape of requests. It does no I/O beyond parsing the
// embedded document once.
//
// Validation follows what Firecracker's serde-based parsing enforces, as far
// as the spec can express it:
//
//   - Unknown fields are rejected (Firecracker derives deny_unknown_fields),
//     unless the schema declares additionalProperties; a schema given for
//     additionalProperties validates the extra values.
//   - Duplicate keys in an object are rejected where unknown fields are
//     (serde reports "duplicate field"); free-form objects keep the last.
//   - "integer" accepts only JSON integers written without fraction or
//     exponent (serde refuses 1.0 for an integer field) that fit in 64 bits;
//     format int32 narrows the range.
//   - required, enum, minimum/maximum (with exclusive variants),
//     minLength/maxLength/pattern, minItems/maxItems, items and nested
//     objects are checked; $ref and allOf are resolved.
//   - The body must be one JSON value of valid UTF-8 with nothing after it.
//   - An operation whose body parameter is required refuses an empty body; an
//     operation without a body parameter refuses a non-empty one.
//
// Known differences from Firecracker, all deliberate:
//
//   - null for an optional property is accepted (Firecracker's fields are
//     mostly Option<T>, which serde accepts as null); null for a required
//     property is refused.
//   - The spec marks mem_size_mib and vcpu_count required for
//     PATCH /machine-config too, so a partial PATCH is refused here although
//     Firecracker's MachineConfigUpdate would accept it. The spec is the
//     contract hearth is held to.
//   - "format" is not checked (MmdsConfig.ipv4_address carries a regular
//     expression in format, not in pattern).
//   - Unsigned ranges that only the Rust types encode (a negative
//     mem_size_mib) are not visible in the spec and are left to the simulator.
//
// Errors are *ValidationError (a JSON pointer to the offending value and a
// message) and *RouteError (unknown path, or a path that exists without that
// method); errors.Is works with ErrRouteNotFound and ErrMethodNotAllowed.
package fcspec
