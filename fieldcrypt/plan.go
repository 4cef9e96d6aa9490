package fieldcrypt

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
)

// TagName is the struct tag key fieldcrypt reads.
const TagName = "zonekey"

// Tag is a parsed `zonekey:"..."` struct tag.
type Tag struct {
	Role          Role // what the field is
	Deterministic bool // "encrypt,deterministic"
}

// Role is what a tagged field is to fieldcrypt.
type Role uint8

// Roles.
const (
	RoleNone    Role = iota // untagged: walked if it may hold tagged fields
	RoleEncrypt             // "encrypt": its value is sealed
	RoleZone                // "zone": the record's custody zone
	RoleSubject             // "subject": the record's data subject
	RoleSkip                // "-": never looked at
)

// ParseTag parses the value of a `zonekey` struct tag. It accepts exactly
// "", "-", "zone", "subject", "encrypt" and "encrypt,deterministic", and
// rejects anything else (an unknown role or option, a repeated option, an
// empty option such as a trailing comma, surrounding spaces) with an error
// wrapping ErrUnsupportedField, so that a typo never leaves a field
// unencrypted.
func ParseTag(tag string) (Tag, error) {
	t, msg := parseTag(tag)
	if msg != "" {
		return Tag{}, fmt.Errorf("%w: %s", ErrUnsupportedField, msg)
	}
	return t, nil
}

// parseTag is ParseTag with the reason for a rejection as a message.
func parseTag(tag string) (Tag, string) {
	name, opts, hasOpts := strings.Cut(tag, ",")
	var t Tag
	switch name {
	case "":
		if hasOpts {
			return t, fmt.Sprintf("tag %q has options but no role", tag)
		}
		return t, ""
	case "-":
		t.Role = RoleSkip
	case "zone":
		t.Role = RoleZone
	case "subject":
		t.Role = RoleSubject
	case "encrypt":
		t.Role = RoleEncrypt
	default:
		return t, fmt.Sprintf("unknown tag role %q in tag %q (want encrypt, zone, subject or -)", name, tag)
	}
	for hasOpts {
		var opt string
		opt, opts, hasOpts = strings.Cut(opts, ",")
		switch {
		case opt == "deterministic" && t.Role == RoleEncrypt && !t.Deterministic:
			t.Deterministic = true
		default:
			return Tag{}, fmt.Sprintf("option %q is not valid in tag %q", opt, tag)
		}
	}
	return t, ""
}

// String returns the canonical text of the tag, which ParseTag parses back
// to t.
func (t Tag) String() string {
	var s string
	switch t.Role {
	case RoleNone:
		return ""
	case RoleEncrypt:
		s = "encrypt"
	case RoleZone:
		s = "zone"
	case RoleSubject:
		s = "subject"
	case RoleSkip:
		s = "-"
	default:
		return fmt.Sprintf("Role(%d)", t.Role)
	}
	if t.Deterministic {
		s += ",deterministic"
	}
	return s
}

// nodeKind is how the walker treats a value.
type nodeKind uint8

const (
	kString nodeKind = iota + 1 // a string-kind value: sealed
	kBytes                      // a []byte-kind value: sealed
	kPtr                        // pointer: follow if non-nil
	kStruct                     // struct: visit fields
	kSlice                      // slice or array: visit elements
	kMap                        // map with string keys: visit values
)

// node is the plan of one value of one type at one path. Plans of
// recursive types are cyclic graphs of nodes.
type node struct {
	kind   nodeKind
	path   string  // field path bound into the ciphertext, e.g. "Address.Street", "Phones[]"
	elem   *node   // kPtr, kSlice, kMap
	fields []field // kStruct: only fields that may hold sealed values
	typ    reflect.Type
	live   bool // may hold a sealed value (pruning)
}

type field struct {
	index int
	node  *node
}

// plan is everything fieldcrypt knows about one struct type.
type plan struct {
	root       *node
	zoneIdx    []int // index path of the zone field, nil if none
	subjectIdx []int // index path of the subject field, nil if none
	err        error
}

// PlanError reports a struct type that fieldcrypt cannot handle, naming the
// field path. It wraps ErrUnsupportedField.
type PlanError struct {
	Type reflect.Type // the record type
	Path string       // the offending field's path in it, e.g. "Address.Zip"
	Msg  string       // what is wrong with the field
}

// Error implements error.
func (e *PlanError) Error() string {
	return fmt.Sprintf("zonekey: %s field %s: %s", e.Type, e.Path, e.Msg)
}

// Unwrap returns ErrUnsupportedField.
func (e *PlanError) Unwrap() error { return ErrUnsupportedField }

var planCache sync.Map // reflect.Type -> *plan

// planFor returns the cached plan of struct type t, building it once.
func planFor(t reflect.Type) *plan {
	if p, ok := planCache.Load(t); ok {
		return p.(*plan)
	}
	p, _ := planCache.LoadOrStore(t, buildPlan(t))
	return p.(*plan)
}

type builder struct {
	top      reflect.Type
	building map[buildKey]*node // struct nodes being built: the ancestors of the current one
	structs  []*node
	plan     *plan
}

type buildKey struct {
	t   reflect.Type
	enc bool
}

func buildPlan(t reflect.Type) *plan {
	p := &plan{}
	b := &builder{top: t, building: map[buildKey]*node{}, plan: p}
	root, err := b.structNode(t, "", nil, true, false)
	if err != nil {
		p.err = err
		return p
	}
	b.prune()
	p.root = root
	return p
}

func (b *builder) errorf(path, format string, args ...any) error {
	return &PlanError{Type: b.top, Path: path, Msg: fmt.Sprintf(format, args...)}
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// fieldTag returns the zonekey tag of sf. A struct tag that mentions the
// key but is malformed (so that reflect cannot find it, for example
// `zonekey:encrypt` without quotes) is an error: it would otherwise leave
// the field silently unencrypted.
func fieldTag(sf reflect.StructField) (string, string) {
	v, ok := sf.Tag.Lookup(TagName)
	if ok {
		return v, ""
	}
	raw := string(sf.Tag)
	for i := strings.Index(raw, TagName+":"); i >= 0; {
		if i == 0 || raw[i-1] == ' ' {
			return "", fmt.Sprintf("malformed struct tag %q (want %s:\"...\")", raw, TagName)
		}
		j := strings.Index(raw[i+1:], TagName+":")
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return "", ""
}

// structNode builds the node of struct type t at path. top says whether t is
// the record itself or embedded in it by value, where zone and subject tags
// live; index is then the index path from the record to t. encryptAll says
// that every leaf below is to be sealed.
//
// Every field's path is its full Go selector from the record, embedded
// fields included ("Contact.Email" for a field promoted from an embedded
// Contact), so that no two fields of a type share a path even when an outer
// field shadows a promoted one.
func (b *builder) structNode(t reflect.Type, path string, index []int, top, encryptAll bool) (*node, error) {
	// A type met again inside itself (a recursive type) reuses its
	// ancestor's node, and with it the ancestor's paths: that keeps plans
	// finite. Any other repeated type gets nodes of its own, so that the
	// same struct at two paths binds two different paths.
	key := buildKey{t, encryptAll}
	if n, ok := b.building[key]; ok {
		return n, nil
	}
	n := &node{kind: kStruct, path: path, typ: t}
	b.building[key] = n
	defer delete(b.building, key)
	b.structs = append(b.structs, n)
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		fpath := join(path, sf.Name)
		raw, msg := fieldTag(sf)
		if msg != "" {
			return nil, b.errorf(fpath, "%s", msg)
		}
		tag, msg := parseTag(raw)
		if msg != "" {
			return nil, b.errorf(fpath, "%s", msg)
		}
		if tag.Role == RoleSkip {
			continue
		}
		idx := append(append([]int(nil), index...), i)
		if tag.Role == RoleZone || tag.Role == RoleSubject {
			if err := b.roleField(sf, tag.Role, fpath, idx, top); err != nil {
				return nil, err
			}
			continue
		}
		enc := encryptAll || tag.Role == RoleEncrypt
		if tag.Deterministic {
			return nil, b.errorf(fpath, "deterministic encryption is not available in this version")
		}
		var child *node
		var err error
		switch et := sf.Type; {
		case sf.Anonymous && !enc && et.Kind() == reflect.Struct:
			// Embedded by value: zone and subject tags in it are the
			// record's own.
			child, err = b.structNode(et, fpath, idx, top, false)
		case sf.Anonymous && !enc && et.Kind() == reflect.Pointer && et.Elem().Kind() == reflect.Struct:
			var sub *node
			sub, err = b.structNode(et.Elem(), fpath, nil, false, false)
			child = &node{kind: kPtr, path: fpath, elem: sub, typ: et}
		case !sf.IsExported():
			switch {
			case tag.Role == RoleEncrypt:
				return nil, b.errorf(fpath, "an encrypted field must be exported")
			case enc:
				return nil, b.errorf(path, "encrypt on a struct seals every field in it, but %s has the unexported field %s (tag it `zonekey:\"-\"`, or tag the exported fields one by one)", t, sf.Name)
			}
			continue
		default:
			child, err = b.valueNode(sf.Type, fpath, enc, nil)
		}
		if err != nil {
			return nil, err
		}
		if child != nil {
			n.fields = append(n.fields, field{index: i, node: child})
		}
	}
	return n, nil
}

func (b *builder) roleField(sf reflect.StructField, role Role, path string, idx []int, top bool) error {
	if !top {
		return b.errorf(path, "zone and subject tags are only honoured on the record's own fields (or those of structs it embeds by value)")
	}
	if sf.Type.Kind() != reflect.String {
		return b.errorf(path, "a %s field must be a string, not %s", roleName(role), sf.Type)
	}
	if !sf.IsExported() {
		return b.errorf(path, "a %s field must be exported", roleName(role))
	}
	dst := &b.plan.zoneIdx
	if role == RoleSubject {
		dst = &b.plan.subjectIdx
	}
	if *dst != nil {
		return b.errorf(path, "more than one %s field", roleName(role))
	}
	*dst = idx
	return nil
}

func roleName(r Role) string {
	if r == RoleZone {
		return "zone"
	}
	return "subject"
}

// valueNode builds the node of a value of type t at path; enc says whether
// the value (or every leaf below it) is to be sealed. It returns nil for an
// untagged value that cannot hold sealed values. outer lists the pointer,
// slice, array and map types t is nested in since the nearest struct: a type
// among them is a recursive type without a struct in its cycle (type S []S),
// which holds no strings.
func (b *builder) valueNode(t reflect.Type, path string, enc bool, outer []reflect.Type) (*node, error) {
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
		if slices.Contains(outer, t) {
			if enc {
				return nil, b.errorf(path, "the recursive type %s holds no string or []byte to encrypt", t)
			}
			return nil, nil
		}
		outer = append(outer, t)
	}
	switch t.Kind() {
	case reflect.String:
		if !enc {
			return nil, nil
		}
		return &node{kind: kString, path: path, typ: t, live: true}, nil
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			if !enc {
				return nil, nil
			}
			if t.Kind() == reflect.Array {
				return nil, b.errorf(path, "a byte array cannot hold a ciphertext; use []byte")
			}
			return &node{kind: kBytes, path: path, typ: t, live: true}, nil
		}
		elem, err := b.valueNode(t.Elem(), path+"[]", enc, outer)
		if err != nil || elem == nil {
			return nil, err
		}
		return &node{kind: kSlice, path: path, elem: elem, typ: t}, nil
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			if enc || mayHoldTags(t.Elem(), map[reflect.Type]bool{}) {
				return nil, b.errorf(path, "maps with %s keys are not supported; use string keys", t.Key())
			}
			return nil, nil
		}
		elem, err := b.valueNode(t.Elem(), path+"{}", enc, outer)
		if err != nil || elem == nil {
			return nil, err
		}
		return &node{kind: kMap, path: path, elem: elem, typ: t}, nil
	case reflect.Pointer:
		elem, err := b.valueNode(t.Elem(), path, enc, outer)
		if err != nil || elem == nil {
			return nil, err
		}
		return &node{kind: kPtr, path: path, elem: elem, typ: t}, nil
	case reflect.Struct:
		// "encrypt" on a struct seals every leaf in it.
		return b.structNode(t, path, nil, false, enc)
	default:
		if enc {
			return nil, b.errorf(path, "a %s cannot hold a ciphertext (encrypt string and []byte fields, or structs, slices, maps and pointers of them)", t)
		}
		return nil, nil
	}
}

// mayHoldTags reports whether values of t may contain zonekey tags other
// than "-".
func mayHoldTags(t reflect.Type, seen map[reflect.Type]bool) bool {
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map, reflect.Struct:
	default:
		return false
	}
	if seen[t] {
		return false // already being (or been) searched
	}
	seen[t] = true
	if t.Kind() != reflect.Struct {
		return mayHoldTags(t.Elem(), seen)
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _ := f.Tag.Lookup(TagName)
		if tag == "-" {
			continue
		}
		if tag != "" || mayHoldTags(f.Type, seen) {
			return true
		}
	}
	return false
}

// prune marks which nodes may hold sealed values and drops the rest, so the
// walker never descends into fields that cannot hold one. Struct nodes of
// recursive types make the graph cyclic: iterate to a fixed point.
func (b *builder) prune() {
	for changed := true; changed; {
		changed = false
		for _, s := range b.structs {
			if s.live {
				continue
			}
			for _, f := range s.fields {
				if isLive(f.node) {
					s.live, changed = true, true
					break
				}
			}
		}
	}
	for _, s := range b.structs {
		kept := s.fields[:0]
		for _, f := range s.fields {
			if isLive(f.node) {
				kept = append(kept, f)
			}
		}
		s.fields = kept
	}
}

func isLive(n *node) bool {
	for n != nil {
		switch n.kind {
		case kString, kBytes:
			return true
		case kStruct:
			return n.live
		default:
			n = n.elem
		}
	}
	return false
}
