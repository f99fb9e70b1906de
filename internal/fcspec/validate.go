package fcspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ValidationError reports the first violation found in a document.
type ValidationError struct {
	// Pointer is the RFC 6901 JSON pointer of the offending value, e.g.
	// /mem_backend/backend_type; "" is the document itself.
	Pointer string
	Msg     string
}

func (e *ValidationError) Error() string {
	where := e.Pointer
	if where == "" {
		where = "(root)"
	}
	return fmt.Sprintf("%s: %s", where, e.Msg)
}

func verr(ptr, format string, args ...any) *ValidationError {
	return &ValidationError{Pointer: ptr, Msg: fmt.Sprintf(format, args...)}
}

// ValidateRequest validates a request body for method+path against the
// operation's body parameter. A route that does not exist is a *RouteError;
// a body that does not conform is a *ValidationError.
func (s *Spec) ValidateRequest(method, path string, body []byte) error {
	op, _, err := s.find(method, path)
	if err != nil {
		return err
	}
	empty := len(bytes.TrimSpace(body)) == 0
	if op.body == nil {
		if !empty {
			return verr("", "%s %s takes no request body", op.Method, op.Path)
		}
		return nil
	}
	if empty {
		if op.body.Required {
			return verr("", "%s %s requires a request body", op.Method, op.Path)
		}
		return nil
	}
	v, err := decodeStrict(body)
	if err != nil {
		return err
	}
	return s.validate(op.body.Schema, v, "")
}

// ValidateDefinition validates a JSON document against a named definition
// such as "MachineConfiguration" or "FullVmConfiguration".
func (s *Spec) ValidateDefinition(name string, body []byte) error {
	d, ok := s.defs[name]
	if !ok {
		return fmt.Errorf("fcspec: no definition named %q", name)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return verr("", "empty document")
	}
	v, err := decodeStrict(body)
	if err != nil {
		return err
	}
	return s.validate(d, v, "")
}

// object keeps keys in document order and remembers a duplicate key, so
// that validation can report it only where serde would (structs, not
// free-form maps).
type object struct {
	keys []string
	vals map[string]any
	dup  string
}

const maxDepth = 512

// decodeStrict decodes one JSON value with numbers kept as json.Number.
func decodeStrict(body []byte) (any, error) {
	if !utf8.Valid(body) {
		return nil, verr("", "body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, verr("", "malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, verr("", "malformed JSON: trailing data after the value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nesting deeper than %d", maxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := &object{vals: map[string]any{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key is not a string")
				}
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				if _, exists := o.vals[k]; exists {
					if o.dup == "" {
						o.dup = k
					}
				} else {
					o.keys = append(o.keys, k)
				}
				o.vals[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return o, nil
		case '[':
			arr := []any{}
			for dec.More() {
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return arr, nil
		default:
			return nil, fmt.Errorf("unexpected %q", t)
		}
	default:
		return t, nil // string, json.Number, bool, nil
	}
}

func ptrJoin(ptr, key string) string {
	key = strings.ReplaceAll(key, "~", "~0")
	key = strings.ReplaceAll(key, "/", "~1")
	return ptr + "/" + key
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		return "number"
	case []any:
		return "array"
	case *object:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

var integerRE = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)

func (s *Spec) validate(sc *schema, v any, ptr string) error {
	if sc == nil {
		return nil
	}
	if sc.Ref != "" {
		d, err := s.deref(sc.Ref)
		if err != nil {
			return err
		}
		// Swagger 2.0 ignores siblings of $ref (the spec only puts
		// descriptions there).
		return s.validate(d, v, ptr)
	}
	if len(sc.AllOf) > 0 {
		return s.validateAllOf(sc, v, ptr)
	}
	if err := s.checkType(sc, v, ptr); err != nil {
		return err
	}
	if err := checkEnum(sc, v, ptr); err != nil {
		return err
	}
	switch t := v.(type) {
	case json.Number:
		return checkBounds(sc, t, ptr)
	case string:
		return checkString(sc, t, ptr)
	case []any:
		return s.checkArray(sc, t, ptr)
	case *object:
		// A schema that says nothing about objects (no type, no
		// properties) accepts any object.
		if sc.Type == "object" || len(sc.Properties) > 0 || len(sc.Required) > 0 || sc.AdditionalProperties != nil {
			return s.checkObject(sc, t, ptr, nil)
		}
	}
	return nil
}

func (s *Spec) checkType(sc *schema, v any, ptr string) error {
	if sc.Type == "" {
		return nil
	}
	ok := false
	switch sc.Type {
	case "object":
		_, ok = v.(*object)
	case "array":
		_, ok = v.([]any)
	case "string":
		_, ok = v.(string)
	case "boolean":
		_, ok = v.(bool)
	case "number":
		_, ok = v.(json.Number)
	case "integer":
		n, isNum := v.(json.Number)
		if !isNum {
			break
		}
		if !integerRE.MatchString(string(n)) {
			return verr(ptr, "expected an integer, got %s", n)
		}
		return checkIntRange(sc, n, ptr)
	default:
		return fmt.Errorf("fcspec: unsupported schema type %q", sc.Type)
	}
	if !ok {
		return verr(ptr, "expected %s, got %s", sc.Type, typeName(v))
	}
	return nil
}

func checkIntRange(sc *schema, n json.Number, ptr string) error {
	s := string(n)
	if strings.HasPrefix(s, "-") {
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return verr(ptr, "integer %s out of range", n)
		}
		if sc.Format == "int32" && i < math.MinInt32 {
			return verr(ptr, "integer %s out of int32 range", n)
		}
		return nil
	}
	u, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return verr(ptr, "integer %s out of range", n)
	}
	if sc.Format == "int32" && u > math.MaxInt32 {
		return verr(ptr, "integer %s out of int32 range", n)
	}
	if sc.Format == "int64" && u > math.MaxInt64 {
		return verr(ptr, "integer %s out of int64 range", n)
	}
	return nil
}

func checkEnum(sc *schema, v any, ptr string) error {
	if len(sc.enumVals) == 0 {
		return nil
	}
	for _, e := range sc.enumVals {
		switch t := v.(type) {
		case string:
			if e.tag == "!!str" && e.value == t {
				return nil
			}
		case json.Number:
			if e.tag == "!!int" || e.tag == "!!float" {
				a, ok1 := new(big.Rat).SetString(e.value)
				b, ok2 := new(big.Rat).SetString(string(t))
				if ok1 && ok2 && a.Cmp(b) == 0 {
					return nil
				}
			}
		case bool:
			if e.tag == "!!bool" && e.value == strconv.FormatBool(t) {
				return nil
			}
		}
	}
	vals := make([]string, len(sc.enumVals))
	for i, e := range sc.enumVals {
		vals[i] = e.value
	}
	shown := fmt.Sprint(v)
	if str, ok := v.(string); ok {
		shown = strconv.Quote(str)
	}
	return verr(ptr, "value %s is not one of: %s", shown, strings.Join(vals, ", "))
}

func checkBounds(sc *schema, n json.Number, ptr string) error {
	if sc.min == nil && sc.max == nil {
		return nil
	}
	r, ok := new(big.Rat).SetString(string(n))
	if !ok {
		return verr(ptr, "invalid number %s", n)
	}
	if sc.min != nil {
		c := r.Cmp(sc.min)
		if c < 0 || (c == 0 && sc.ExclusiveMinimum) {
			return verr(ptr, "value %s is below the minimum %s", n, sc.Minimum.Value)
		}
	}
	if sc.max != nil {
		c := r.Cmp(sc.max)
		if c > 0 || (c == 0 && sc.ExclusiveMaximum) {
			return verr(ptr, "value %s is above the maximum %s", n, sc.Maximum.Value)
		}
	}
	return nil
}

func checkString(sc *schema, s string, ptr string) error {
	n := utf8.RuneCountInString(s)
	if sc.MinLength != nil && n < *sc.MinLength {
		return verr(ptr, "string shorter than %d characters", *sc.MinLength)
	}
	if sc.MaxLength != nil && n > *sc.MaxLength {
		return verr(ptr, "string longer than %d characters", *sc.MaxLength)
	}
	if sc.pattern != nil && !sc.pattern.MatchString(s) {
		return verr(ptr, "string %q does not match pattern %s", s, sc.Pattern)
	}
	return nil
}

func (s *Spec) checkArray(sc *schema, arr []any, ptr string) error {
	if sc.MinItems != nil && len(arr) < *sc.MinItems {
		return verr(ptr, "array has fewer than %d items", *sc.MinItems)
	}
	if sc.MaxItems != nil && len(arr) > *sc.MaxItems {
		return verr(ptr, "array has more than %d items", *sc.MaxItems)
	}
	for i, item := range arr {
		if err := s.validate(sc.Items, item, ptr+"/"+strconv.Itoa(i)); err != nil {
			return err
		}
	}
	return nil
}

// checkObject validates o against sc. extraProps carries properties that
// allOf siblings declare, so that they do not count as unknown.
func (s *Spec) checkObject(sc *schema, o *object, ptr string, extraProps map[string]*schema) error {
	free := sc.AdditionalProperties != nil && sc.AdditionalProperties.Allowed
	if o.dup != "" && !free {
		return verr(ptrJoin(ptr, o.dup), "duplicate field %q", o.dup)
	}
	for _, k := range o.keys {
		val := o.vals[k]
		fp := ptrJoin(ptr, k)
		prop, known := sc.Properties[k]
		if !known {
			prop, known = extraProps[k]
		}
		if !known {
			if sc.AdditionalProperties != nil && sc.AdditionalProperties.Allowed {
				if err := s.validate(sc.AdditionalProperties.Schema, val, fp); err != nil {
					return err
				}
				continue
			}
			return verr(fp, "unknown field %q", k)
		}
		if val == nil {
			if contains(sc.Required, k) {
				return verr(fp, "required field %q must not be null", k)
			}
			continue // serde accepts null for an Option<T> field
		}
		if err := s.validate(prop, val, fp); err != nil {
			return err
		}
	}
	for _, r := range sc.Required {
		if _, ok := o.vals[r]; !ok {
			return verr(ptrJoin(ptr, r), "missing required field %q", r)
		}
	}
	return nil
}

// validateAllOf merges the parts of an allOf into one object view: the value
// must satisfy every part, and a property declared by any part is known to
// all of them.
func (s *Spec) validateAllOf(sc *schema, v any, ptr string) error {
	parts := make([]*schema, 0, len(sc.AllOf)+1)
	for _, p := range sc.AllOf {
		for p != nil && p.Ref != "" {
			d, err := s.deref(p.Ref)
			if err != nil {
				return err
			}
			p = d
		}
		parts = append(parts, p)
	}
	own := *sc
	own.AllOf = nil
	parts = append(parts, &own)
	props := map[string]*schema{}
	for _, p := range parts {
		for k, ps := range p.Properties {
			props[k] = ps
		}
	}
	o, isObj := v.(*object)
	for _, p := range parts {
		if isObj && (p.Type == "object" || p.Type == "" && len(p.Properties) > 0) {
			if err := s.checkType(p, v, ptr); err != nil {
				return err
			}
			if err := s.checkObject(p, o, ptr, props); err != nil {
				return err
			}
			continue
		}
		if err := s.validate(p, v, ptr); err != nil {
			return err
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
