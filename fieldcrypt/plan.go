package fieldcrypt

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf8"
	"unsafe"
)

// TagName is the struct tag key fieldcrypt reads.
const TagName = "zonekey"

// Tag is a parsed `zonekey:"..."` struct tag.
type Tag struct {
	Role          Role // what the field is
	Deterministic bool // "encrypt,deterministic"

	// Blind index ("index=Source,..."): the fields below are set only for
	// RoleIndex.
	Source    string     // the field of the same struct whose value is indexed
	Bits      int        // "bits=N": length of a term's hash; 0 means DefaultIndexBits
	Name      string     // "name=...": the index key's name; "" means the index field's path
	Normalize Normalizer // "trim", "lower", "nfc"
}

// Normalizer is a set of normalisations applied to a value before it is
// indexed. Whatever their order in the tag, they are applied in this order:
// trim, lower, nfc.
type Normalizer uint8

// The normalisations of a blind index.
const (
	// NormTrim removes leading and trailing white space (unicode.IsSpace).
	NormTrim Normalizer = 1 << iota
	// NormLower maps the value to lower case (strings.ToLower: Unicode
	// simple case mapping, not locale-specific).
	NormLower
	// NormNFC puts the value in Unicode Normalization Form C, so that
	// composed and decomposed spellings of a character index alike.
	NormNFC
)

var normNames = []struct {
	n    Normalizer
	name string
}{{NormTrim, "trim"}, {NormLower, "lower"}, {NormNFC, "nfc"}}

// Blind index limits.
const (
	// DefaultIndexBits is the length of a term's hash when the tag gives
	// no bits=. Choose bits for the data set: with N records of distinct
	// values, a term matches on average 1 + (N-1)/2^bits of them.
	DefaultIndexBits = 16
	// MinIndexBits and MaxIndexBits bound bits=.
	MinIndexBits = 1
	MaxIndexBits = 128
	// maxIndexName bounds name=.
	maxIndexName = 128
)

// Role is what a tagged field is to fieldcrypt.
type Role uint8

// Roles.
const (
	RoleNone    Role = iota // untagged: walked if it may hold tagged fields
	RoleEncrypt             // "encrypt": its value is sealed
	RoleZone                // "zone": the record's custody zone
	RoleSubject             // "subject": the record's data subject
	RoleSkip                // "-": never looked at
	RoleIndex               // "index=Source": a blind index of the field Source
)

// ParseTag parses the value of a `zonekey` struct tag. It accepts exactly
// "", "-", "zone", "subject", "encrypt", "encrypt,deterministic" and
// "index=Source" followed by any of the options "bits=N" (MinIndexBits to
// MaxIndexBits), "name=NAME" (letters, digits, '_', '-' and '.') and the
// normalisers "trim", "lower" and "nfc", each at most once. It rejects
// anything else (an unknown role, option or normaliser, a repeated option,
// an empty option such as a trailing comma, surrounding spaces) with an
// error wrapping ErrUnsupportedField, so that a typo never leaves a field
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
		src, isIndex := strings.CutPrefix(name, "index=")
		if !isIndex {
			return t, fmt.Sprintf("unknown tag role %q in tag %q (want encrypt, zone, subject, index=Field or -)", name, tag)
		}
		return parseIndexTag(tag, src, opts, hasOpts)
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

// parseIndexTag parses the rest of an "index=src" tag.
func parseIndexTag(tag, src, opts string, hasOpts bool) (Tag, string) {
	if !isIdent(src) {
		return Tag{}, fmt.Sprintf("index source %q in tag %q is not a field name", src, tag)
	}
	t := Tag{Role: RoleIndex, Source: src}
	for hasOpts {
		var opt string
		opt, opts, hasOpts = strings.Cut(opts, ",")
		key, val, hasVal := strings.Cut(opt, "=")
		switch {
		case key == "bits" && hasVal && t.Bits == 0:
			n, err := strconv.Atoi(val)
			if err != nil || strconv.Itoa(n) != val || n < MinIndexBits || n > MaxIndexBits {
				return Tag{}, fmt.Sprintf("bits=%s in tag %q is out of range (want %d to %d)", val, tag, MinIndexBits, MaxIndexBits)
			}
			t.Bits = n
		case key == "name" && hasVal && t.Name == "":
			if !isIndexName(val) {
				return Tag{}, fmt.Sprintf("name=%s in tag %q: an index name is 1 to %d letters, digits, '_', '-' and '.'", val, tag, maxIndexName)
			}
			t.Name = val
		case !hasVal && normOf(opt) != 0 && t.Normalize&normOf(opt) == 0:
			t.Normalize |= normOf(opt)
		case !hasVal && opt != "" && normOf(opt) == 0:
			return Tag{}, fmt.Sprintf("unknown normaliser %q in tag %q (want trim, lower or nfc)", opt, tag)
		default:
			return Tag{}, fmt.Sprintf("option %q is not valid in tag %q", opt, tag)
		}
	}
	return t, ""
}

func normOf(name string) Normalizer {
	for _, n := range normNames {
		if n.name == name {
			return n.n
		}
	}
	return 0
}

// isIdent reports whether s is an exported Go identifier.
func isIdent(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	if !unicode.IsUpper(r) {
		return false
	}
	for _, r := range s {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			return false
		}
	}
	return true
}

func isIndexName(s string) bool {
	if s == "" || len(s) > maxIndexName {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
		if !ok {
			return false
		}
	}
	return true
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
	case RoleIndex:
		s = "index=" + t.Source
		if t.Bits != 0 {
			s += ",bits=" + strconv.Itoa(t.Bits)
		}
		if t.Name != "" {
			s += ",name=" + t.Name
		}
		for _, n := range normNames {
			if t.Normalize&n.n != 0 {
				s += "," + n.name
			}
		}
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
	kIndex                      // a blind-index field: computed from its source field
)

// node is the plan of one value of one type at one path. Plans of
// recursive types are cyclic graphs of nodes.
type node struct {
	kind   nodeKind
	path   string  // field path bound into the ciphertext, e.g. "Address.Street", "Phones[]"
	elem   *node   // kPtr, kSlice, kMap
	fields []field // kStruct: only fields that may hold sealed values
	typ    reflect.Type
	live   bool       // may hold a sealed value (pruning)
	det    bool       // kString, kBytes: sealed deterministically
	index  *indexSpec // kIndex
}

// indexSpec is the plan of one blind-index field.
type indexSpec struct {
	src     int    // index of the source field in the struct
	srcPath string // path of the source field: its binding
	srcDet  bool   // the source is deterministic
	name    string // the index key's name
	bits    int
	norm    Normalizer
}

type field struct {
	index int
	node  *node
}

// plan is everything fieldcrypt knows about one struct type.
type plan struct {
	typ        reflect.Type // the record type (set by planFor)
	ptrTyp     reflect.Type // *typ (set by planFor)
	root       *node
	zoneIdx    []int            // index path of the zone field, nil if none
	subjectIdx []int            // index path of the subject field, nil if none
	indexes    map[string]*node // blind-index fields by path
	indexList  []*node          // the same, in field order: found by indexNode
	dets       map[string]*node // deterministic leaves by path
	err        error

	// flat lists the sealed fields of a record whose sealed values are
	// all direct string and []byte fields, none deterministic, without
	// blind indexes: the common record, which runFlat handles without
	// reflection. It is nil for any other record.
	flat []flatField
	// zoneOff and subjectOff are the offsets of the zone and subject
	// fields in the record (reached through structs embedded by value,
	// so at fixed offsets), when zoneIdx and subjectIdx are set.
	zoneOff, subjectOff uintptr
}

// flatField is a sealed field of a flat record.
type flatField struct {
	off  uintptr // offset in the record
	node *node   // a kString or kBytes leaf
}

// offsetOf returns the offset in struct type t of the field at the index
// path idx, which passes only through structs embedded by value.
func offsetOf(t reflect.Type, idx []int) uintptr {
	var off uintptr
	for _, i := range idx {
		sf := t.Field(i)
		off += sf.Offset
		t = sf.Type
	}
	return off
}

// searchable reports whether the type has blind-index or deterministic
// fields, which need a SearchKeyring.
// indexNode returns the blind-index field at path, or nil. A record has
// few of them: comparing paths is quicker than hashing one.
func (p *plan) indexNode(path string) *node {
	for _, n := range p.indexList {
		if n.path == path {
			return n
		}
	}
	return nil
}

func (p *plan) searchable() bool { return len(p.indexes) > 0 || len(p.dets) > 0 }

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
	slot := &planSlots[planSlot(t)]
	if p := slot.Load(); p != nil && p.typ == t {
		return p
	}
	var p *plan
	if v, ok := planCache.Load(t); ok {
		p = v.(*plan)
	} else {
		np := buildPlan(t)
		np.typ, np.ptrTyp = t, reflect.PointerTo(t)
		v, _ := planCache.LoadOrStore(t, np)
		p = v.(*plan)
	}
	slot.Store(p)
	return p
}

// ptrPlanSlots is planSlots for the pointer types of records: the argument
// of Encrypt and Decrypt, which can then find the plan of their record
// without taking the pointer type apart.
var ptrPlanSlots [64]atomic.Pointer[plan]

// planOfPointer returns the plan of the struct type pt points to, or nil if
// pt is not a pointer to a struct.
func planOfPointer(pt reflect.Type) *plan {
	slot := &ptrPlanSlots[planSlot(pt)]
	if p := slot.Load(); p != nil && typeWord(p.ptrTyp) == typeWord(pt) {
		return p
	}
	if pt == nil || pt.Kind() != reflect.Pointer || pt.Elem().Kind() != reflect.Struct {
		return nil
	}
	p := planFor(pt.Elem())
	slot.Store(p)
	return p
}

// planSlots is a small direct-mapped cache in front of planCache: a hit is
// one atomic load and a comparison, where a sync.Map lookup hashes the
// interface. A slot holds the plan of the last type that used it; plans are
// immutable once published.
var planSlots [64]atomic.Pointer[plan]

// planSlot picks the slot of t from the address of its type descriptor.
func planSlot(t reflect.Type) uintptr {
	a := uintptr(typeWord(t))
	return (a>>4 ^ a>>10) % uintptr(len(planSlots))
}

// typeWord returns the address of t's type descriptor, which identifies t:
// the data word of the interface (reflect's types are unique). Comparing
// two of them is cheaper than comparing the interfaces.
func typeWord(t reflect.Type) unsafe.Pointer {
	return (*[2]unsafe.Pointer)(unsafe.Pointer(&t))[1]
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
	if p.zoneIdx != nil {
		p.zoneOff = offsetOf(t, p.zoneIdx)
	}
	if p.subjectIdx != nil {
		p.subjectOff = offsetOf(t, p.subjectIdx)
	}
	flat := !p.searchable() && len(root.fields) <= maxFlat
	for _, f := range root.fields {
		if k := f.node.kind; k != kString && k != kBytes || f.node.det {
			flat = false
			break
		}
		p.flat = append(p.flat, flatField{off: t.Field(f.index).Offset, node: f.node})
	}
	if !flat {
		p.flat = nil
	}
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
		if tag.Role == RoleIndex {
			child, err := b.indexField(t, sf, tag, path, fpath, encryptAll)
			if err != nil {
				return nil, err
			}
			n.fields = append(n.fields, field{index: i, node: child})
			continue
		}
		enc := encryptAll || tag.Role == RoleEncrypt
		if tag.Deterministic {
			if err := checkDet(sf.Type); err != nil {
				return nil, b.errorf(fpath, "%s", err)
			}
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
		if tag.Deterministic && child != nil {
			leaf := child
			if leaf.kind == kPtr {
				leaf = leaf.elem
			}
			leaf.det = true
			b.addDet(leaf)
		}
		if child != nil {
			n.fields = append(n.fields, field{index: i, node: child})
		}
	}
	return n, nil
}

// checkDet checks the type of a field tagged "encrypt,deterministic": a
// string or []byte, or a pointer to one. Slices, maps and structs are
// refused: their elements would be matched one by one, which is rarely what
// an equality search means, and map keys are not bound.
func checkDet(t reflect.Type) error {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.String || t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
		return nil
	}
	return fmt.Errorf("deterministic encryption applies to string and []byte fields and pointers to them, not %s", t)
}

func (b *builder) addDet(n *node) {
	if b.plan.dets == nil {
		b.plan.dets = map[string]*node{}
	}
	b.plan.dets[n.path] = n
}

// indexField builds the node of the blind-index field sf of struct t at
// path fpath (t itself is at path). Its source is a field of t itself
// tagged "encrypt" (or "encrypt,deterministic") holding a string.
func (b *builder) indexField(t reflect.Type, sf reflect.StructField, tag Tag, path, fpath string, encryptAll bool) (*node, error) {
	switch {
	case encryptAll:
		return nil, b.errorf(fpath, "an index field cannot be inside a struct tagged encrypt")
	case !sf.IsExported():
		return nil, b.errorf(fpath, "an index field must be exported")
	case sf.Type.Kind() != reflect.String:
		return nil, b.errorf(fpath, "an index field must be a string (it holds a term), not %s", sf.Type)
	}
	src, ok := t.FieldByName(tag.Source)
	if !ok || len(src.Index) != 1 {
		return nil, b.errorf(fpath, "index source %s is not a field of %s (the source must be in the same struct)", join(path, tag.Source), t)
	}
	srcPath := join(path, tag.Source)
	raw, _ := fieldTag(src)
	stag, _ := parseTag(raw)
	switch {
	case stag.Role != RoleEncrypt:
		return nil, b.errorf(fpath, "index source %s must be tagged `zonekey:\"encrypt\"` (a blind index of a plaintext field protects nothing)", srcPath)
	case src.Type.Kind() != reflect.String:
		return nil, b.errorf(fpath, "index source %s must be a string, not %s", srcPath, src.Type)
	}
	spec := &indexSpec{src: src.Index[0], srcPath: srcPath, srcDet: stag.Deterministic, name: tag.Name, bits: tag.Bits, norm: tag.Normalize}
	if spec.name == "" {
		spec.name = fpath
	}
	if spec.bits == 0 {
		spec.bits = DefaultIndexBits
	}
	for _, other := range b.plan.indexList {
		if o := other.index; o.name == spec.name && (o.bits != spec.bits || o.norm != spec.norm) {
			return nil, b.errorf(fpath, "index key name %q is also %s's, with other bits or normalisers: one index's terms would be truncations or variants of the other's, so the two could be joined; give one its own name= or both the same options", spec.name, other.path)
		}
	}
	n := &node{kind: kIndex, path: fpath, typ: sf.Type, index: spec}
	if b.plan.indexes == nil {
		b.plan.indexes = map[string]*node{}
	}
	b.plan.indexes[fpath] = n
	b.plan.indexList = append(b.plan.indexList, n)
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
		case kString, kBytes, kIndex:
			return true
		case kStruct:
			return n.live
		default:
			n = n.elem
		}
	}
	return false
}
