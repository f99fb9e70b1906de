package fcspec

import (
	_ "embed"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

//go:embed firecracker.yaml
var specYAML []byte

// Spec is the parsed, immutable API description. It is safe for concurrent
// use.
type Spec struct {
	version string
	routes  []*route
	defs    map[string]*schema
}

// route is one path template with its operations by upper-case method.
type route struct {
	template string
	segments []string // literal segment, or "{name}" for a parameter
	literals int      // number of literal segments, for match priority
	ops      map[string]*operation
}

type operation struct {
	ID     string
	Method string
	Path   string
	body   *parameter // nil when the operation takes no body
}

type parameter struct {
	Name     string  `yaml:"name"`
	In       string  `yaml:"in"`
	Required bool    `yaml:"required"`
	Type     string  `yaml:"type"`
	Schema   *schema `yaml:"schema"`
}

type rawOperation struct {
	OperationID string      `yaml:"operationId"`
	Parameters  []parameter `yaml:"parameters"`
}

type document struct {
	Swagger string `yaml:"swagger"`
	Info    struct {
		Version string `yaml:"version"`
	} `yaml:"info"`
	Paths       map[string]map[string]yaml.Node `yaml:"paths"`
	Definitions map[string]*schema              `yaml:"definitions"`
}

// schema is the subset of Swagger 2.0 schema objects that the Firecracker
// spec uses, plus the validation keywords a future spec could add.
type schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Format               string             `yaml:"format"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*schema `yaml:"properties"`
	AdditionalProperties *additional        `yaml:"additionalProperties"`
	Items                *schema            `yaml:"items"`
	AllOf                []*schema          `yaml:"allOf"`
	Enum                 []yaml.Node        `yaml:"enum"`
	Minimum              *scalar            `yaml:"minimum"`
	Maximum              *scalar            `yaml:"maximum"`
	ExclusiveMinimum     bool               `yaml:"exclusiveMinimum"`
	ExclusiveMaximum     bool               `yaml:"exclusiveMaximum"`
	MinLength            *int               `yaml:"minLength"`
	MaxLength            *int               `yaml:"maxLength"`
	Pattern              string             `yaml:"pattern"`
	MinItems             *int               `yaml:"minItems"`
	MaxItems             *int               `yaml:"maxItems"`

	// Filled in by compile.
	propOrder []string
	min, max  *big.Rat
	pattern   *regexp.Regexp
	enumVals  []enumValue
}

type enumValue struct {
	tag   string // YAML tag: !!str, !!int, !!float, !!bool
	value string
}

// additional is additionalProperties: either a boolean or a schema.
type additional struct {
	Allowed bool
	Schema  *schema
}

func (a *additional) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var b bool
		if err := n.Decode(&b); err != nil {
			return fmt.Errorf("additionalProperties: %w", err)
		}
		a.Allowed = b
		return nil
	}
	var s schema
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("additionalProperties: %w", err)
	}
	a.Allowed = true
	a.Schema = &s
	return nil
}

var (
	loadOnce sync.Once
	loaded   *Spec
	loadErr  error
)

// Load parses the embedded firecracker.yaml once and returns the cached
// result on later calls.
func Load() (*Spec, error) {
	loadOnce.Do(func() {
		loaded, loadErr = parse(specYAML)
	})
	return loaded, loadErr
}

// MustLoad is Load for callers that treat a broken embedded spec as a
// programming error.
func MustLoad() *Spec {
	s, err := Load()
	if err != nil {
		panic(err)
	}
	return s
}

// Version is the spec's info.version, e.g. "1.17.0-dev".
func (s *Spec) Version() string { return s.version }

var httpMethods = map[string]bool{"get": true, "put": true, "patch": true, "post": true, "delete": true, "head": true, "options": true}

func parse(data []byte) (*Spec, error) {
	var doc document
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("fcspec: parse firecracker.yaml: %w", err)
	}
	if doc.Swagger != "2.0" {
		return nil, fmt.Errorf("fcspec: unsupported swagger version %q", doc.Swagger)
	}
	s := &Spec{version: doc.Info.Version, defs: doc.Definitions}
	if s.defs == nil {
		s.defs = map[string]*schema{}
	}
	for name, d := range s.defs {
		if err := s.compile(d, map[*schema]bool{}); err != nil {
			return nil, fmt.Errorf("fcspec: definition %s: %w", name, err)
		}
	}
	for tmpl, methods := range doc.Paths {
		r := &route{template: tmpl, ops: map[string]*operation{}}
		for _, seg := range splitPath(tmpl) {
			r.segments = append(r.segments, seg)
			if !strings.HasPrefix(seg, "{") {
				r.literals++
			}
		}
		for m, node := range methods {
			if !httpMethods[m] {
				continue // path-level keys such as "parameters"
			}
			var raw rawOperation
			if err := node.Decode(&raw); err != nil {
				return nil, fmt.Errorf("fcspec: %s %s: %w", m, tmpl, err)
			}
			op := &operation{ID: raw.OperationID, Method: strings.ToUpper(m), Path: tmpl}
			for i := range raw.Parameters {
				p := raw.Parameters[i]
				if p.In != "body" {
					continue
				}
				if p.Schema == nil {
					return nil, fmt.Errorf("fcspec: %s %s: body parameter without schema", m, tmpl)
				}
				if err := s.compile(p.Schema, map[*schema]bool{}); err != nil {
					return nil, fmt.Errorf("fcspec: %s %s: %w", m, tmpl, err)
				}
				op.body = &p
			}
			r.ops[op.Method] = op
		}
		s.routes = append(s.routes, r)
	}
	// Literal segments win over parameters so that a future /balloon/{x}
	// could not shadow /balloon/statistics; ties sort by template for
	// determinism.
	sort.Slice(s.routes, func(i, j int) bool {
		if s.routes[i].literals != s.routes[j].literals {
			return s.routes[i].literals > s.routes[j].literals
		}
		return s.routes[i].template < s.routes[j].template
	})
	return s, nil
}

// compile resolves what validation needs ahead of time: numeric bounds,
// patterns, enum values, property order. seen guards against cycles.
func (s *Spec) compile(sc *schema, seen map[*schema]bool) error {
	if sc == nil || seen[sc] {
		return nil
	}
	seen[sc] = true
	if sc.Ref != "" {
		if _, err := s.deref(sc.Ref); err != nil {
			return err
		}
	}
	var err error
	if sc.min, err = ratOf(sc.Minimum); err != nil {
		return fmt.Errorf("minimum: %w", err)
	}
	if sc.max, err = ratOf(sc.Maximum); err != nil {
		return fmt.Errorf("maximum: %w", err)
	}
	if sc.Pattern != "" {
		if sc.pattern, err = regexp.Compile(sc.Pattern); err != nil {
			return fmt.Errorf("pattern: %w", err)
		}
	}
	for _, n := range sc.Enum {
		sc.enumVals = append(sc.enumVals, enumValue{tag: n.ShortTag(), value: n.Value})
	}
	for name := range sc.Properties {
		sc.propOrder = append(sc.propOrder, name)
	}
	sort.Strings(sc.propOrder)
	for _, name := range sc.propOrder {
		if err := s.compile(sc.Properties[name], seen); err != nil {
			return fmt.Errorf("property %s: %w", name, err)
		}
	}
	if sc.AdditionalProperties != nil {
		if err := s.compile(sc.AdditionalProperties.Schema, seen); err != nil {
			return err
		}
	}
	for _, sub := range sc.AllOf {
		if err := s.compile(sub, seen); err != nil {
			return err
		}
	}
	return s.compile(sc.Items, seen)
}

// scalar keeps a YAML scalar's text, so that numeric bounds are compared
// exactly (as big.Rat) rather than through float64.
type scalar struct{ Value string }

func (v *scalar) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a scalar", n.Line)
	}
	v.Value = n.Value
	return nil
}

func ratOf(n *scalar) (*big.Rat, error) {
	if n == nil {
		return nil, nil
	}
	r, ok := new(big.Rat).SetString(n.Value)
	if !ok {
		return nil, fmt.Errorf("not a number: %q", n.Value)
	}
	return r, nil
}

const defPrefix = "#/definitions/"

func (s *Spec) deref(ref string) (*schema, error) {
	name, ok := strings.CutPrefix(ref, defPrefix)
	if !ok {
		return nil, fmt.Errorf("unsupported $ref %q", ref)
	}
	d, ok := s.defs[name]
	if !ok {
		return nil, fmt.Errorf("unresolved $ref %q", ref)
	}
	return d, nil
}

// splitPath splits "/drives/{drive_id}" into ["drives", "{drive_id}"]; "/"
// yields no segments.
func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// ErrRouteNotFound and ErrMethodNotAllowed classify *RouteError for
// errors.Is.
var (
	ErrRouteNotFound    = errors.New("fcspec: no such path")
	ErrMethodNotAllowed = errors.New("fcspec: method not allowed on path")
)

// RouteError reports a method+path that the spec does not describe.
type RouteError struct {
	Method string
	Path   string
	// Allowed lists the methods the path does support; it is empty when
	// the path matches no template at all.
	Allowed []string
}

// NotFound reports that no path template matched.
func (e *RouteError) NotFound() bool { return len(e.Allowed) == 0 }

// MethodNotAllowed reports that the path exists but not with this method.
func (e *RouteError) MethodNotAllowed() bool { return len(e.Allowed) > 0 }

func (e *RouteError) Error() string {
	if e.NotFound() {
		return fmt.Sprintf("no operation for %s %s: unknown path", e.Method, e.Path)
	}
	return fmt.Sprintf("no operation for %s %s: path supports %s", e.Method, e.Path, strings.Join(e.Allowed, ", "))
}

// Is makes errors.Is(err, ErrRouteNotFound) and ErrMethodNotAllowed work.
func (e *RouteError) Is(target error) bool {
	switch target {
	case ErrRouteNotFound:
		return e.NotFound()
	case ErrMethodNotAllowed:
		return e.MethodNotAllowed()
	}
	return false
}

// Route finds the operation for a method and a concrete path such as
// /drives/rootfs. A query string is ignored and one trailing slash is
// tolerated, as Firecracker's own path splitting does. It returns the
// operationId and the path parameters.
func (s *Spec) Route(method, path string) (string, map[string]string, error) {
	op, params, err := s.find(method, path)
	if err != nil {
		return "", nil, err
	}
	return op.ID, params, nil
}

func (s *Spec) find(method, path string) (*operation, map[string]string, error) {
	method = strings.ToUpper(method)
	clean, _, _ := strings.Cut(path, "?")
	segs := splitPath(clean)
	var allowed []string
	for _, r := range s.routes {
		params, ok := r.match(segs)
		if !ok {
			continue
		}
		if op, ok := r.ops[method]; ok {
			return op, params, nil
		}
		if allowed == nil {
			for m := range r.ops {
				allowed = append(allowed, m)
			}
			sort.Strings(allowed)
		}
	}
	return nil, nil, &RouteError{Method: method, Path: path, Allowed: allowed}
}

func (r *route) match(segs []string) (map[string]string, bool) {
	if len(segs) != len(r.segments) {
		return nil, false
	}
	params := map[string]string{}
	for i, t := range r.segments {
		if name, ok := strings.CutPrefix(t, "{"); ok {
			if segs[i] == "" {
				return nil, false
			}
			params[strings.TrimSuffix(name, "}")] = segs[i]
			continue
		}
		if t != segs[i] {
			return nil, false
		}
	}
	return params, true
}
