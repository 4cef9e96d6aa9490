// Package fieldcrypt encrypts and decrypts the tagged fields of Go structs in
// place, each under its record's data key.
//
//	type User struct {
//		ID     string `zonekey:"subject"` // whose data: selects the DEK
//		Region string `zonekey:"zone"`    // custody zone of the record
//		Phone  string `zonekey:"encrypt"` // sealed in place
//		Notes  []byte `zonekey:"encrypt"`
//		Plan   string                     // untouched
//	}
//
// Tagged fields may be strings, byte slices, pointers to them, and slices,
// arrays and string-keyed maps of those; "encrypt" on a struct (or a slice or
// map of structs) seals every string and []byte in it. Untagged struct fields
// and embedded structs are walked for tagged fields inside them; interface
// fields and unexported untagged fields are not. Anything else tagged
// "encrypt", an unknown tag or option, and a zone or subject tag anywhere but
// on a string field of the record itself (or of a struct it embeds by value)
// are refused when the type is first seen, with a *PlanError naming the
// field.
//
// The plan of a type is built once and cached; Encrypt and Decrypt then walk
// precomputed field indexes and do no tag parsing. Both are all-or-nothing:
// every new value is computed first and the struct is written only when all
// succeeded, so a failed call leaves it exactly as it was.
//
// Each ciphertext is bound to its field path (the full Go selector from the
// record, embedded struct names included, with "[]" for slice and array
// elements and "{}" for map values), its map key and the record's subject
// (see package envelope): moved to another field, map key or subject's
// record, it fails to open with ErrTampered. Elements of one slice are not
// bound to their index, and values at different depths of a recursive type
// share the paths of the outermost level, so moves among those are not
// detected. A value reachable along two different paths (aliased pointers,
// slices or maps) cannot be bound to both and is refused with
// ErrInvalidValue, as is a cyclic value.
//
// Two tags make records findable by an encrypted value (see IndexTerms and
// DeterministicTerms, and SECURITY.md for what each reveals):
//
//	Email    string `zonekey:"encrypt"`
//	EmailIdx string `zonekey:"index=Email,bits=16,lower,trim"` // blind index of Email
//	TaxID    string `zonekey:"encrypt,deterministic"`          // AES-SIV: equal values, equal ciphertexts
//
// A blind-index field is a string next to its source, a string field of the
// same struct tagged "encrypt"; Encrypt sets it to a term of the source's
// plaintext, with the options bits=N (1 to 128, default 16), name=KEY (the
// index key's name, by default the field's path: types whose indexes have
// the same name share their key and terms; one type's indexes of one name
// must have the same bits and normalisers) and the normalisers trim, lower
// and nfc. "encrypt,deterministic" applies to string and []byte fields
// and pointers to them, and binds the field path only, not the subject.
package fieldcrypt

import (
	"cmp"
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/keystore"
)

// Errors, wrapped in a *FieldError or *PlanError that says where. They are
// the same values as the sentinels of package zonekey; the keyring's own
// errors (package keystore) are passed on wrapped in a *FieldError too.
var (
	// ErrUnsupportedField reports a struct type fieldcrypt cannot handle.
	ErrUnsupportedField = errs.UnsupportedField
	// ErrInvalidValue reports an argument that is not a non-nil pointer to
	// a struct, or a record whose zone or subject is missing.
	ErrInvalidValue = errs.InvalidValue
	// ErrNotEncrypted reports a plaintext value met by Decrypt; pass
	// AllowPlaintext to leave such values as they are.
	ErrNotEncrypted = errs.NotEncrypted
	// ErrTampered reports a ciphertext that failed authentication: altered,
	// or moved from another field, map key or subject.
	ErrTampered = errs.Tampered
	// ErrFormat reports a malformed ciphertext.
	ErrFormat = errs.Format
	// ErrUnknownKey reports a ciphertext under a DEK the keyring does not
	// hold (for example one sealed by another keystore).
	ErrUnknownKey = errs.UnknownKey
	// ErrUnknownZone reports a record whose zone is not configured.
	ErrUnknownZone = errs.UnknownZone
	// ErrKMSUnavailable reports that the zone's custodian could not be
	// reached; the record is unchanged and a retry may succeed.
	ErrKMSUnavailable = errs.KMSUnavailable
)

// Keyring is what fieldcrypt needs of the keystore: the DEK to encrypt a
// subject's data, and the DEK a ciphertext names. *keystore.Keyring
// implements it.
type Keyring interface {
	DataKey(ctx context.Context, zone, subject string) (*keystore.DEK, error)
	Key(ctx context.Context, id envelope.KeyID) (*keystore.DEK, error)
}

// Crypter encrypts and decrypts tagged struct fields. It is safe for
// concurrent use.
type Crypter struct {
	keys     Keyring
	search   SearchKeyring    // keys, if it holds search keys too
	shared   sharedAuxKeyring // keys, if it hands out its cached search keys
	resolver Resolver
}

// Resolver supplies the zone and subject of records whose type has no zone
// or subject tag. Either result may be "" to leave it to tags or options.
type Resolver func(record any) (zone, subject string, err error)

// Option configures a Crypter.
type Option func(*Crypter)

// WithResolver sets the Resolver consulted for records without zone or
// subject tags.
func WithResolver(r Resolver) Option { return func(c *Crypter) { c.resolver = r } }

// New returns a Crypter over the keyring.
func New(keys Keyring, opts ...Option) *Crypter {
	c := &Crypter{keys: keys}
	c.search, _ = keys.(SearchKeyring)
	c.shared, _ = keys.(sharedAuxKeyring)
	for _, o := range opts {
		o(c)
	}
	return c
}

// CallOption adjusts one Encrypt or Decrypt call.
type CallOption interface{ apply(*callOpts) }

type callOpts struct {
	zone, subject  string
	allowPlaintext bool
}

type zoneOpt string

func (z zoneOpt) apply(o *callOpts) { o.zone = string(z) }

type subjectOpt string

func (s subjectOpt) apply(o *callOpts) { o.subject = string(s) }

type plaintextOpt struct{}

func (plaintextOpt) apply(o *callOpts) { o.allowPlaintext = true }

// Zone sets the record's zone for a type without a zone tag.
func Zone(zone string) CallOption { return zoneOpt(zone) }

// Subject sets the record's subject for a type without a subject tag.
func Subject(subject string) CallOption { return subjectOpt(subject) }

// AllowPlaintext lets Decrypt leave values that are not encrypted as they
// are, for reading rows written before encryption was introduced.
func AllowPlaintext() CallOption { return plaintextOpt{} }

// FieldError reports a failure to encrypt or decrypt one field. It names the
// field path and the zone, never the value.
type FieldError struct {
	Op   string // "encrypt" or "decrypt"
	Type reflect.Type
	Path string // field path, with the map key in brackets if any; "" if the failure concerns the whole record
	Zone string // zone of the record (encrypt) or of the ciphertext's DEK (decrypt), if known
	Err  error
}

// Error implements error.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString("zonekey: ")
	b.WriteString(e.Op)
	b.WriteByte(' ')
	if e.Type != nil {
		b.WriteString(e.Type.String())
	}
	if e.Path != "" {
		b.WriteByte('.')
		b.WriteString(e.Path)
	}
	if e.Zone != "" {
		fmt.Fprintf(&b, " (zone %q)", e.Zone)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the cause.
func (e *FieldError) Unwrap() error { return e.Err }

// Encrypt seals every tagged field of the struct v points to under the DEK
// of the record's subject in the record's zone. A value that is already an
// envelope of this record (under a DEK of the same zone and subject, and
// authenticating at its field path) is left as it is; an envelope of
// another record is refused with ErrTampered. Empty strings and empty slices
// stay empty. On error v is unchanged.
//
// A blind-index field (`zonekey:"index=Source"`) is set to the term of its
// source field's plaintext under the current version of its index key, or to
// "" if the source is empty; a deterministic field is sealed under the
// current version of its (zone, field) key, and a deterministic ciphertext of
// an older version is left as it is (see Reindex).
func (c *Crypter) Encrypt(ctx context.Context, v any, opts ...CallOption) error {
	_, err := c.run(ctx, v, modeEncrypt, opts)
	return err
}

// Decrypt opens every tagged field of the struct v points to. A value that
// is not an envelope fails with ErrNotEncrypted unless AllowPlaintext is
// given. On error v is unchanged.
// Blind-index fields are left as they are: a term cannot be reversed.
func (c *Crypter) Decrypt(ctx context.Context, v any, opts ...CallOption) error {
	_, err := c.run(ctx, v, modeDecrypt, opts)
	return err
}

// cycleCheckDepth is the nesting depth of pointers, slices and maps after
// which the walker starts to remember the ones on its way, to refuse a cyclic
// value instead of recursing forever (encoding/json does the same).
const cycleCheckDepth = 1000

// maxDepth bounds the nesting depth of pointers, slices and maps the walker
// follows: an acyclic list deeper than this is refused with ErrInvalidValue
// instead of exhausting the stack (a fatal error, not a panic).
const maxDepth = 10000

// memoAfter is the number of pointers, slices and maps a walk enters
// before it starts to remember them with the binding it walked them
// under, so that one shared many times (a DAG: two fields of each node
// pointing to the next) is walked once, not once per path, which can be
// exponentially many.
const memoAfter = 1024

// mode is what a walk does.
type mode uint8

const (
	modeDecrypt mode = iota
	modeEncrypt
	modeReindex // Encrypt, and reseal deterministic values of older key versions
	modeBlank   // empty the blind-index and deterministic fields; no keys
)

// walker carries one call's state; pooled so the hot path allocates only
// the new field values.
type walker struct {
	c       *Crypter
	ctx     context.Context
	encrypt bool // modeEncrypt or modeReindex
	reindex bool
	blank   bool
	opts    callOpts
	typ     reflect.Type
	zone    string
	subject string
	dek     *keystore.DEK // encrypt: the record's DEK; decrypt: the last one used
	// dekChecked says that keyFor found dek to be the record subject's.
	dekChecked bool
	aux        []*keystore.AuxKey // current index and deterministic keys used by this call
	looked     bool               // openKey was called by the last openOnce
	// scratch is the working memory of the envelope for all the
	// record's values, claimed by the first and released once all are
	// done (by runFlat, or release).
	scratch envelope.Scratch
	writes  []write
	targets []target // alias check scratch
	depth   int
	seen    map[seenKey]struct{} // beyond cycleCheckDepth: pointers on the way
	entered int                  // pointers, slices and maps entered
	// walked, past memoAfter entered: the pointers, slices and maps
	// walked in full, by plan node, with the map key bound below them.
	walked map[walkedKey]string
}

type walkedKey struct {
	seenKey
	n *node
}

type seenKey struct {
	p unsafe.Pointer
	n int
	t reflect.Type
}

type writeKind uint8

const (
	wString writeKind = iota
	wBytes
	wMap
)

// write is one pending assignment, applied only once all have been computed.
type write struct {
	kind   writeKind
	node   *node         // the leaf (wString, wBytes) or map (wMap) node
	mapKey string        // wString, wBytes: the map key bound with the value
	target reflect.Value // wString, wBytes: settable; wMap: the map
	key    reflect.Value // wMap
	str    string
	bytes  []byte
	val    reflect.Value // wMap
}

// target identifies the storage a write assigns to, for the alias check.
type target struct {
	addr uintptr
	key  string // wMap: the map key
	i    int    // index in walker.writes
}

var walkers = sync.Pool{New: func() any { return new(walker) }}

// maxPooledWrites bounds the pending-write buffer a pooled walker keeps.
const maxPooledWrites = 4096

// run walks the struct v points to in mode m and reports whether it
// changed any field.
func (c *Crypter) run(ctx context.Context, v any, m mode, opts []CallOption) (changed bool, err error) {
	if len(opts) == 0 && (m == modeEncrypt || m == modeDecrypt) {
		// The common call: a record whose plan is flat (then it has
		// neither blind-index nor deterministic fields).
		if p := planOfPointer(reflect.TypeOf(v)); p != nil && p.flat != nil && p.err == nil {
			if ptr := pointerOf(v); ptr != nil {
				return c.runFlat(ctx, v, ptr, p, m == modeEncrypt)
			}
		}
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return false, fmt.Errorf("%w: want a non-nil pointer to a struct, got %T", ErrInvalidValue, v)
	}
	rv = rv.Elem()
	p := planFor(rv.Type())
	if p.err != nil {
		return false, p.err
	}
	if m != modeBlank && p.searchable() && (c == nil || c.search == nil) {
		return false, fmt.Errorf("%w: %s has blind-index or deterministic fields, and the Keyring does not hold their keys (it does not implement SearchKeyring)", ErrUnsupportedField, rv.Type())
	}
	w := walkers.Get().(*walker)
	defer w.release()
	w.c, w.ctx, w.typ = c, ctx, rv.Type()
	w.encrypt, w.reindex, w.blank = m == modeEncrypt || m == modeReindex, m == modeReindex, m == modeBlank
	for _, o := range opts {
		o.apply(&w.opts)
	}
	if !w.blank {
		if p.zoneIdx != nil {
			w.zone = rv.FieldByIndex(p.zoneIdx).String()
		}
		if p.subjectIdx != nil {
			w.subject = rv.FieldByIndex(p.subjectIdx).String()
		}
		if err := w.identify(v, p); err != nil {
			return false, err
		}
	}
	if w.encrypt {
		w.dek, err = c.keys.DataKey(ctx, w.zone, w.subject)
		if err != nil {
			return false, &FieldError{Op: w.op(), Type: w.typ, Zone: w.zone, Err: err}
		}
	}
	if err := w.visit(rv, p.root, ""); err != nil {
		return false, err
	}
	if err := w.checkAliases(); err != nil {
		return false, err
	}
	for i := range w.writes {
		wr := &w.writes[i]
		switch wr.kind {
		case wString:
			wr.target.SetString(wr.str)
		case wBytes:
			wr.target.SetBytes(wr.bytes)
		case wMap:
			wr.target.SetMapIndex(wr.key, wr.val)
		}
	}
	return len(w.writes) > 0, nil
}

// pointerOf returns the pointer held by v, whose dynamic type is a pointer
// type: the data word of the interface, which is what
// reflect.ValueOf(v).UnsafePointer() returns after a switch on the kind.
func pointerOf(v any) unsafe.Pointer {
	return (*[2]unsafe.Pointer)(unsafe.Pointer(&v))[1]
}

// maxFlat bounds the fields of a record the flat path handles.
const maxFlat = 8

// runFlat is run for the common records, whose sealed values are all direct
// string and []byte fields (plan.flat), called without options. It reads
// and writes the fields at their offsets from rec, the record v points to,
// without reflection: the walker and the new values live on the stack, with
// no pending-write list, no alias check (a field's storage is its own) and
// no pool round trip. It is all-or-nothing like run.
func (c *Crypter) runFlat(ctx context.Context, v any, rec unsafe.Pointer, p *plan, encrypt bool) (changed bool, err error) {
	// Set field by field: a composite literal of this size is built
	// aside and copied, which costs more than the whole walk.
	var w walker
	// The scratch is released below as soon as the values are computed;
	// this covers a panic in between (a Keyring's), so that its slot is
	// not lost.
	defer w.scratch.Release()
	w.c, w.ctx, w.typ, w.encrypt = c, ctx, p.typ, encrypt
	if p.zoneIdx != nil {
		w.zone = *(*string)(unsafe.Add(rec, p.zoneOff))
	}
	if p.subjectIdx != nil {
		w.subject = *(*string)(unsafe.Add(rec, p.subjectOff))
	}
	// Both tags set and nothing to resolve: identify would only check
	// them.
	if c.resolver != nil || p.zoneIdx == nil || p.subjectIdx == nil || w.subject == "" || w.zone == "" {
		if err := w.identify(v, p); err != nil {
			return false, err
		}
	}
	if encrypt {
		w.dek, err = c.keys.DataKey(ctx, w.zone, w.subject)
		if err != nil {
			return false, &FieldError{Op: w.op(), Type: w.typ, Zone: w.zone, Err: err}
		}
	}
	// Every sealed field of a flat plan is exported (the plan refuses
	// unexported ones), so assigning through its address is what
	// reflect's SetString and SetBytes would do.
	if len(p.flat) == 1 {
		// One field: nothing to hold back until the others are done.
		return w.flatOne(rec, &p.flat[0])
	}
	var outS [maxFlat]string
	var outB [maxFlat][]byte
	var set [maxFlat]bool
	for i := range p.flat {
		f := &p.flat[i]
		ptr := unsafe.Add(rec, f.off)
		if f.node.kind == kString {
			if s := *(*string)(ptr); s != "" {
				outS[i], set[i], err = w.flatString(s, f.node)
			}
		} else if b := *(*[]byte)(ptr); len(b) != 0 {
			outB[i], set[i], err = w.flatBytes(b, f.node)
		}
		if err != nil {
			w.scratch.Release()
			return false, err
		}
	}
	w.scratch.Release()
	for i := range p.flat {
		if !set[i] {
			continue
		}
		changed = true
		f := &p.flat[i]
		ptr := unsafe.Add(rec, f.off)
		if f.node.kind == kString {
			*(*string)(ptr) = outS[i]
		} else {
			*(*[]byte)(ptr) = outB[i]
		}
	}
	return changed, nil
}

// flatOne computes the new value of the sealed field f of the flat record
// at rec, and stores it there.
func (w *walker) flatOne(rec unsafe.Pointer, f *flatField) (bool, error) {
	ptr := unsafe.Add(rec, f.off)
	if f.node.kind == kString {
		s := *(*string)(ptr)
		if s == "" {
			return false, nil
		}
		out, ok, err := w.flatString(s, f.node)
		w.scratch.Release()
		if ok {
			*(*string)(ptr) = out
		}
		return ok, err
	}
	b := *(*[]byte)(ptr)
	if len(b) == 0 {
		return false, nil
	}
	out, ok, err := w.flatBytes(b, f.node)
	w.scratch.Release()
	if ok {
		*(*[]byte)(ptr) = out
	}
	return ok, err
}

// flatString is sealedValue for a direct string field s at n of a flat
// record. It goes straight to the envelope in the common cases, a value
// that cannot be an envelope to seal or an AES-GCM envelope to open, and
// leaves anything else to sealedValue, which also says what is wrong.
func (w *walker) flatString(s string, n *node) (string, bool, error) {
	if w.encrypt {
		if len(s) < minDetText || !envelope.IsText(s) {
			out, err := w.dek.SealStringWith(&w.scratch, s, envelope.Binding{Path: n.path, Subject: w.subject})
			if err != nil {
				return "", false, w.fail(n, "", "", err)
			}
			return out, true, nil
		}
	} else if len(s) >= minText && envelope.IsText(s) {
		w.looked = false
		out, err := envelope.OpenStringFuncWith(&w.scratch, s, envelope.Binding{Path: n.path, Subject: w.subject}, w.openKey)
		if w.looked {
			if err != nil {
				return "", false, openErr(w, s, n, "", err)
			}
			return out, true, nil
		}
	}
	return sealedValue(w, s, n, "", &stringOps)
}

// flatBytes is flatString for a []byte field.
func (w *walker) flatBytes(s []byte, n *node) ([]byte, bool, error) {
	if w.encrypt {
		if len(s) < minDetText || !envelope.IsText(s) {
			out, err := w.dek.SealBytesWith(&w.scratch, s, envelope.Binding{Path: n.path, Subject: w.subject})
			if err != nil {
				return nil, false, w.fail(n, "", "", err)
			}
			return out, true, nil
		}
	} else if len(s) >= minText && envelope.IsText(s) {
		w.looked = false
		out, err := envelope.OpenBytesFuncWith(&w.scratch, s, envelope.Binding{Path: n.path, Subject: w.subject}, w.openKey)
		if w.looked {
			if err != nil {
				return nil, false, openErr(w, s, n, "", err)
			}
			return out, true, nil
		}
	}
	return sealedValue(w, s, n, "", &bytesOps)
}

// release resets w and returns it to the pool.
func (w *walker) release() {
	w.scratch.Release()
	clear(w.writes)
	clear(w.targets)
	clear(w.aux)
	writes, targets, aux := w.writes[:0], w.targets[:0], w.aux[:0]
	if cap(writes) > maxPooledWrites {
		writes, targets = nil, nil
	}
	// Zeroed in place, then refilled: a composite literal of this size
	// is built aside and copied.
	*w = walker{}
	w.writes, w.targets, w.aux = writes, targets, aux
	walkers.Put(w)
}

// identify completes the record's zone and subject, which the caller has
// read from the tagged fields, from options or the resolver, and checks
// them.
func (w *walker) identify(v any, p *plan) error {
	op := w.op()
	if (p.zoneIdx != nil && w.opts.zone != "") || (p.subjectIdx != nil && w.opts.subject != "") {
		return fmt.Errorf("%w: %s %s: zone or subject given by option for a type that has the tag", ErrInvalidValue, op, w.typ)
	}
	if w.opts.zone != "" {
		w.zone = w.opts.zone
	}
	if w.opts.subject != "" {
		w.subject = w.opts.subject
	}
	if w.c.resolver != nil && (p.zoneIdx == nil || p.subjectIdx == nil) {
		z, s, err := w.c.resolver(v)
		if err != nil {
			return fmt.Errorf("%s %s: resolver: %w", op, w.typ, err)
		}
		if p.zoneIdx == nil && w.zone == "" {
			w.zone = z
		}
		if p.subjectIdx == nil && w.subject == "" {
			w.subject = s
		}
	}
	if p.subjectIdx != nil && w.subject == "" {
		return fmt.Errorf("%w: %s %s: the subject field is empty", ErrInvalidValue, op, w.typ)
	}
	if w.encrypt && w.zone == "" {
		return fmt.Errorf("%w: %s %s: the record has no zone (tag a field `zonekey:\"zone\"`, or pass fieldcrypt.Zone)", ErrInvalidValue, op, w.typ)
	}
	return nil
}

func (w *walker) op() string {
	switch {
	case w.reindex:
		return "reindex"
	case w.encrypt:
		return "encrypt"
	case w.blank:
		return "blank"
	}
	return "decrypt"
}

// fail wraps err in a *FieldError for the value at n (and mapKey). zone is
// the zone of the DEK involved, or "" for the record's.
func (w *walker) fail(n *node, mapKey, zone string, err error) error {
	path := n.path
	if mapKey != "" {
		path = fmt.Sprintf("%s[%q]", n.path, mapKey)
	}
	if zone == "" {
		zone = w.zone
	}
	return &FieldError{Op: w.op(), Type: w.typ, Path: path, Zone: zone, Err: err}
}

// enter notes one more level of pointer, slice or map nesting, for the
// pointer, slice or map v at n. Past cycleCheckDepth it remembers v and
// refuses a value that is its own ancestor; past maxDepth it refuses the
// value. Past memoAfter entries it reports skip for a v already walked at n
// under the same map key (its writes are pending already), and refuses one
// walked under another map key (its values cannot be bound to both). Every
// enter that returns no error and no skip is paired with a leave.
func (w *walker) enter(v reflect.Value, n *node, mapKey string) (skip bool, err error) {
	if w.entered++; w.entered > memoAfter {
		k := walkedKey{w.key(v), n}
		if prev, ok := w.walked[k]; ok {
			if prev == mapKey {
				return true, nil
			}
			return false, w.fail(n, mapKey, "", fmt.Errorf("%w: the value is shared between map entries %q and %q (it cannot be bound to both)", ErrInvalidValue, prev, mapKey))
		}
		if w.walked == nil {
			w.walked = make(map[walkedKey]string)
		}
		w.walked[k] = mapKey
	}
	w.depth++
	if w.depth <= cycleCheckDepth {
		return false, nil
	}
	if w.depth > maxDepth {
		w.depth--
		return false, w.fail(n, mapKey, "", errTooDeep)
	}
	k := w.key(v)
	if _, dup := w.seen[k]; dup {
		w.depth--
		return false, w.fail(n, mapKey, "", errCyclic)
	}
	if w.seen == nil {
		w.seen = make(map[seenKey]struct{})
	}
	w.seen[k] = struct{}{}
	return false, nil
}

// key identifies the pointer, slice or map v.
func (w *walker) key(v reflect.Value) seenKey {
	k := seenKey{v.UnsafePointer(), 0, v.Type()}
	if v.Kind() == reflect.Slice {
		k.n = v.Len()
	}
	return k
}

func (w *walker) leave(v reflect.Value) {
	if w.depth > cycleCheckDepth {
		delete(w.seen, w.key(v))
	}
	w.depth--
}

var errTooDeep = fmt.Errorf("%w: the value nests pointers, slices and maps more than %d deep", ErrInvalidValue, maxDepth)

var errCyclic = fmt.Errorf("%w: the value is cyclic (it contains itself)", ErrInvalidValue)

// visit walks v along n. mapKey is the key of the innermost map entry on
// the way, bound into the ciphertexts below it.
func (w *walker) visit(v reflect.Value, n *node, mapKey string) error {
	switch n.kind {
	case kString:
		return w.leafString(v, n, mapKey)
	case kBytes:
		return w.leafBytes(v, n, mapKey)
	case kPtr:
		if v.IsNil() {
			return nil
		}
		if skip, err := w.enter(v, n, mapKey); skip || err != nil {
			return err
		}
		err := w.visit(v.Elem(), n.elem, mapKey)
		w.leave(v)
		return err
	case kStruct:
		for _, f := range n.fields {
			if f.node.kind == kIndex {
				if err := w.indexField(v, f, mapKey); err != nil {
					return err
				}
				continue
			}
			if err := w.visit(v.Field(f.index), f.node, mapKey); err != nil {
				return err
			}
		}
	case kSlice:
		if v.Kind() == reflect.Array {
			return w.visitElems(v, n, mapKey)
		}
		if v.Len() == 0 {
			return nil
		}
		if skip, err := w.enter(v, n, mapKey); skip || err != nil {
			return err
		}
		err := w.visitElems(v, n, mapKey)
		w.leave(v)
		return err
	case kMap:
		if v.Len() == 0 {
			return nil
		}
		if skip, err := w.enter(v, n, mapKey); skip || err != nil {
			return err
		}
		err := w.visitMap(v, n)
		w.leave(v)
		return err
	}
	return nil
}

func (w *walker) visitElems(v reflect.Value, n *node, mapKey string) error {
	for i := 0; i < v.Len(); i++ {
		if err := w.visit(v.Index(i), n.elem, mapKey); err != nil {
			return err
		}
	}
	return nil
}

func (w *walker) visitMap(v reflect.Value, n *node) error {
	it := v.MapRange()
	for it.Next() {
		key := it.Key()
		// Map values are not addressable: work on a copy, then put it
		// back in the commit, after the copy's own writes.
		cp := reflect.New(n.elem.typ).Elem()
		cp.Set(it.Value())
		before := len(w.writes)
		if err := w.visit(cp, n.elem, key.String()); err != nil {
			return err
		}
		if len(w.writes) > before {
			w.writes = append(w.writes, write{kind: wMap, node: n, target: v, key: key, val: cp})
		}
	}
	return nil
}

func (w *walker) binding(n *node, mapKey string) envelope.Binding {
	return envelope.Binding{Path: n.path, MapKey: mapKey, Subject: w.subject}
}

func (w *walker) leafString(v reflect.Value, n *node, mapKey string) error {
	s := v.String()
	if s == "" {
		return nil
	}
	out, ok, err := value(w, s, n, mapKey, &stringOps)
	if err != nil || !ok {
		return err
	}
	if !v.CanSet() {
		return w.fail(n, mapKey, "", fmt.Errorf("%w: field is not settable", ErrUnsupportedField))
	}
	w.writes = append(w.writes, write{kind: wString, node: n, mapKey: mapKey, target: v, str: out})
	return nil
}

func (w *walker) leafBytes(v reflect.Value, n *node, mapKey string) error {
	b := v.Bytes()
	if len(b) == 0 {
		return nil
	}
	out, ok, err := value(w, b, n, mapKey, &bytesOps)
	if err != nil || !ok {
		return err
	}
	if !v.CanSet() {
		return w.fail(n, mapKey, "", fmt.Errorf("%w: field is not settable", ErrUnsupportedField))
	}
	w.writes = append(w.writes, write{kind: wBytes, node: n, mapKey: mapKey, target: v, bytes: out})
	return nil
}

// The lengths of the shortest text envelopes (an empty plaintext) of each
// algorithm.
const (
	minText    = len(envelope.Prefix) + (envelope.Overhead*4+2)/3
	minDetText = len(envelope.Prefix) + (envelope.DetOverhead*4+2)/3
)

// looksSealed reports whether s is shaped like an envelope: the prefix, a
// valid header and at least the minimum length of its algorithm. Values that
// only start with the prefix ("zk1.hello") are data.
func looksSealed[T string | []byte](s T) (byte, envelope.KeyID, bool) {
	if len(s) < minDetText || !envelope.IsText(s) {
		return 0, envelope.KeyID{}, false
	}
	alg, id, err := envelope.TextHeader(s)
	if err != nil || alg == envelope.AlgAES256GCM && len(s) < minText {
		return 0, envelope.KeyID{}, false
	}
	return alg, id, true
}

var (
	errDetInRandomized = fmt.Errorf("%w: a deterministic ciphertext in a randomized field", ErrTampered)
	errRandomizedInDet = fmt.Errorf("%w: a randomized ciphertext in a deterministic field", ErrTampered)
)

// leaf computes the new value of one non-empty string or []byte value s at
// n; ok is false when the value is to stay as it is.
func leaf[T string | []byte](w *walker, s T, n *node, mapKey string,
	open func(*envelope.Key, T, envelope.Binding) (T, error)) (out T, ok bool, err error) {
	b := w.binding(n, mapKey)
	alg, id, sealed := looksSealed(s)
	if sealed && alg != envelope.AlgAES256GCM {
		return out, false, w.fail(n, mapKey, "", errDetInRandomized)
	}
	if w.encrypt {
		if sealed {
			// Already encrypted: leave it, once it proves to be this
			// record's ciphertext of this field. Never seal a foreign or
			// damaged ciphertext, nor pass it on.
			dek, err := w.ownKey(id)
			if err != nil {
				return out, false, w.fail(n, mapKey, "", err)
			}
			if _, err := open(dek.Key, s, b); err != nil {
				return out, false, w.fail(n, mapKey, "", err)
			}
			return out, false, nil
		}
		out, err = seal(w, s, b)
		if err != nil {
			return out, false, w.fail(n, mapKey, "", err)
		}
		return out, true, nil
	}
	if !sealed {
		return out, false, plaintext(w, s, n, mapKey)
	}
	dek, err := w.keyFor(id)
	if err != nil {
		zone := ""
		if dek != nil {
			zone = dek.Zone
		}
		return out, false, w.fail(n, mapKey, zone, err)
	}
	out, err = open(dek.Key, s, b)
	if err != nil {
		return out, false, w.fail(n, mapKey, dek.Zone, err)
	}
	return out, true, nil
}

// seal seals s bound to b under the record's DEK in the walker's scratch.
// The envelope is called directly, not through a function value: a
// pointer to the scratch passed to a function value escapes, and with it
// the walker runFlat keeps on its stack.
func seal[T string | []byte](w *walker, s T, b envelope.Binding) (out T, err error) {
	switch v := any(s).(type) {
	case string:
		var o string
		o, err = w.dek.SealStringWith(&w.scratch, v, b)
		out = T(o)
	case []byte:
		var o []byte
		o, err = w.dek.SealBytesWith(&w.scratch, v, b)
		out = T(o)
	}
	return out, err
}

// plaintext is what Decrypt does with a value s at n that is not an
// envelope: nil (leave it) with AllowPlaintext, else an error.
func plaintext[T string | []byte](w *walker, s T, n *node, mapKey string) error {
	switch {
	case w.opts.allowPlaintext:
		return nil
	case !envelope.IsText(s):
		return w.fail(n, mapKey, "", ErrNotEncrypted)
	}
	err := fmt.Errorf("%w: truncated envelope", ErrFormat)
	if _, herr := envelope.TextKeyID(s); herr != nil {
		err = herr
	}
	return w.fail(n, mapKey, "", err)
}

// keyFor returns the DEK named id for Decrypt, checking that it is the
// record subject's. When that check fails it returns the DEK with the error.
func (w *walker) keyFor(id envelope.KeyID) (*keystore.DEK, error) {
	dek := w.dek
	if dek != nil && w.dekChecked && dek.ID() == id {
		return dek, nil // the record's, already checked
	}
	if dek == nil || dek.ID() != id {
		var err error
		dek, err = w.c.keys.Key(w.ctx, id)
		if err != nil {
			return nil, err
		}
		w.dek, w.dekChecked = dek, false
	}
	if dek.Subject != w.subject {
		return dek, fmt.Errorf("%w: the ciphertext was sealed for another subject", ErrTampered)
	}
	w.dekChecked = true
	return dek, nil
}

// ownKey returns the DEK named id for Encrypt, which must be a DEK of the
// record's zone and subject: the current one, or an older generation.
func (w *walker) ownKey(id envelope.KeyID) (*keystore.DEK, error) {
	if id == w.dek.ID() {
		return w.dek, nil
	}
	other, err := w.c.keys.Key(w.ctx, id)
	if err != nil {
		return nil, fmt.Errorf("the value is a ciphertext that cannot be verified: %w", err)
	}
	if other.Zone != w.dek.Zone || other.Subject != w.dek.Subject {
		return nil, fmt.Errorf("%w: the value is already a ciphertext of another zone or subject", ErrTampered)
	}
	return other, nil
}

// checkAliases refuses a value whose pending writes assign twice to the same
// storage along different bindings: a string or slice reached through two
// aliased pointers, slices or maps. Its ciphertext can be bound to only one
// field path, so the other field would never decrypt.
func (w *walker) checkAliases() error {
	if len(w.writes) < 2 {
		return nil
	}
	ts := w.targets[:0]
	for i := range w.writes {
		wr := &w.writes[i]
		t := target{i: i}
		if wr.kind == wMap {
			t.addr, t.key = uintptr(wr.target.UnsafePointer()), wr.key.String()
		} else {
			t.addr = wr.target.UnsafeAddr()
		}
		ts = append(ts, t)
	}
	w.targets = ts
	same := func(a, b target) bool { return a.addr == b.addr && a.key == b.key }
	if len(ts) <= 32 {
		for i := range ts {
			for j := i + 1; j < len(ts); j++ {
				if same(ts[i], ts[j]) {
					if err := w.aliasError(ts[i].i, ts[j].i); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	slices.SortFunc(ts, func(a, b target) int {
		if c := cmp.Compare(a.addr, b.addr); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	for i := 1; i < len(ts); i++ {
		if same(ts[i-1], ts[i]) {
			if err := w.aliasError(ts[i-1].i, ts[i].i); err != nil {
				return err
			}
		}
	}
	return nil
}

// aliasError reports writes i and j to the same storage, unless both bind
// the same path and map key (a value shared within a recursive type at one
// path, which opens at either).
func (w *walker) aliasError(i, j int) error {
	a, b := &w.writes[i], &w.writes[j]
	if a.kind == b.kind && a.node.path == b.node.path && a.mapKey == b.mapKey {
		return nil
	}
	return w.fail(b.node, b.mapKey, "", fmt.Errorf("%w: the value is shared with field %s (aliased pointers, slices or maps cannot be bound to two field paths)", ErrInvalidValue, a.node.path))
}

// valueOps are the envelope operations on one kind of value, string or
// []byte, so that one generic walk serves both.
type valueOps[T string | []byte] struct {
	open             func(*envelope.Key, T, envelope.Binding) (T, error)
	detSeal, detOpen func(*envelope.DetKey, T, envelope.Binding) (T, error)
}

var (
	stringOps = valueOps[string]{
		open:    (*envelope.Key).OpenString,
		detSeal: (*envelope.DetKey).SealString, detOpen: (*envelope.DetKey).OpenString,
	}
	bytesOps = valueOps[[]byte]{
		open:    (*envelope.Key).OpenBytes,
		detSeal: (*envelope.DetKey).SealBytes, detOpen: (*envelope.DetKey).OpenBytes,
	}
)

// value computes the new value of one non-empty value s at n in the
// walker's mode; ok is false when it is to stay as it is.
func value[T string | []byte](w *walker, s T, n *node, mapKey string, ops *valueOps[T]) (out T, ok bool, err error) {
	switch {
	case w.blank:
		return out, n.det, nil // deterministic values are emptied
	case n.det:
		return detLeaf(w, s, n, mapKey, ops.detSeal, ops.detOpen)
	}
	return sealedValue(w, s, n, mapKey, ops)
}

// sealedValue is value for a randomized field. Decrypt first tries to open
// s decoding it once; anything that is not a well-formed AES-GCM envelope
// goes through leaf, which tells why.
func sealedValue[T string | []byte](w *walker, s T, n *node, mapKey string, ops *valueOps[T]) (out T, ok bool, err error) {
	if !w.encrypt {
		if out, done, err := openOnce(w, s, n, mapKey); done {
			return out, true, err
		}
	}
	return leaf(w, s, n, mapKey, ops.open)
}

// openOnce is the decrypt leaf of a randomized value s at n, for
// well-formed AES-GCM envelopes: it decodes s once and looks the DEK up by
// the id in the decoded header. done is false when s was not opened or
// refused here (not an envelope of that shape); the caller then takes the
// general path, which reports the same errors as before.
func openOnce[T string | []byte](w *walker, s T, n *node, mapKey string) (out T, done bool, err error) {
	if len(s) < minText || !envelope.IsText(s) {
		return out, false, nil
	}
	w.looked = false
	// Called directly, not through a function value, so that the key
	// lookup (a method value) does not escape to the heap.
	switch v := any(s).(type) {
	case string:
		var o string
		o, err = envelope.OpenStringFuncWith(&w.scratch, v, w.binding(n, mapKey), w.openKey)
		out = T(o)
	case []byte:
		var o []byte
		o, err = envelope.OpenBytesFuncWith(&w.scratch, v, w.binding(n, mapKey), w.openKey)
		out = T(o)
	}
	if !w.looked {
		return out, false, nil
	}
	if err != nil {
		return out, true, openErr(w, s, n, mapKey, err)
	}
	return out, true, nil
}

// openKey is the key lookup of openOnce: the DEK named id, which must be
// the record subject's. It notes in w that it was called, and stores no
// pointer there beside the DEK keyFor keeps: a pointer store costs a write
// barrier while the garbage collector marks.
func (w *walker) openKey(id envelope.KeyID) (*envelope.Key, error) {
	w.looked = true
	if dek := w.dek; dek != nil && w.dekChecked && dek.ID() == id {
		return dek.Key, nil // keyFor's first case, without the call
	}
	dek, err := w.keyFor(id)
	if err != nil {
		return nil, err
	}
	return dek.Key, nil
}

// openErr wraps the error err of openOnce for the envelope s as leaf does,
// naming the zone of its DEK when the lookup found it (keyFor then keeps it
// in w.dek).
func openErr[T string | []byte](w *walker, s T, n *node, mapKey string, err error) error {
	zone := ""
	if id, herr := envelope.TextKeyID(s); herr == nil && w.dek != nil && w.dek.ID() == id {
		zone = w.dek.Zone
	}
	return w.fail(n, mapKey, zone, err)
}
