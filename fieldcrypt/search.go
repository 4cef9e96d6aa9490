package fieldcrypt

// Finding records by an encrypted field: blind indexes and deterministic
// encryption.
//
// A blind-index field holds a term: a truncated keyed hash of its source
// field's (normalised) plaintext, under a per-(zone, index) key. Looking a
// value up means computing its terms (IndexTerms) and selecting the rows
// whose index column holds one of them; since a term is truncated, it also
// matches other values, by design, so the candidates are decrypted and
// compared. A deterministic field holds an AES-SIV envelope under a
// per-(zone, field) key; equal values give equal envelopes, so looking a
// value up means sealing it (DeterministicTerms) and comparing envelopes.
//
// Both keys are versioned. A term is written "<version>:<hex>"; a
// deterministic envelope names its key. After a rotation (keystore's
// RotateAuxKey) both functions return one value per live version, so lookups
// find records written under either, until every record has been re-indexed
// (Reindex) and the old versions retired (keystore's RetireAuxKeys).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/text/unicode/norm"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// SearchKeyring is a Keyring that also holds the keys of blind indexes and
// deterministic fields; *keystore.Keyring implements it. A Crypter needs one
// for types with such fields.
type SearchKeyring interface {
	Keyring
	// AuxKey returns a version of a key; version 0 is the current one.
	AuxKey(ctx context.Context, zone string, purpose keystore.AuxPurpose, name string, version uint32) (*keystore.AuxKey, error)
	// AuxKeys returns the live versions of a key, newest first.
	AuxKeys(ctx context.Context, zone string, purpose keystore.AuxPurpose, name string) ([]*keystore.AuxKey, error)
	// AuxKeyByID returns the key a deterministic envelope names.
	AuxKeyByID(ctx context.Context, id envelope.KeyID) (*keystore.AuxKey, error)
}

// Reindex brings the searchable fields of the stored record v points to up to
// the current key versions, and reports whether it changed v (then the
// application stores it again). It is Encrypt, with one difference:
// deterministic values sealed under an older key version (or under another
// zone's key, after the record moved zones) are resealed under the current
// version of the record's zone. Blind-index fields are recomputed from their
// source field, as Encrypt always does; plain encrypted fields are verified
// and left as they are. On error v is unchanged.
//
// A re-index after a rotation of an index or deterministic key runs over
// every record of the zone, in any order, and may stop and resume anywhere,
// since Reindex of an up-to-date record changes nothing:
//
//	// 1. Rotate the key (the custodian, or c.Keyring().RotateAuxKey).
//	// 2. Wait the keyring's DEKTTL, so every process writes new terms
//	//    under the new version.
//	// 3. Re-index, checkpointing the last primary key done:
//	for rows := range db.UsersAfter(ctx, checkpoint, 1000) {
//		for _, u := range rows {
//			changed, err := crypter.Reindex(ctx, &u)
//			if err != nil { ... } // ErrKeyShredded: blank it (BlankSearchable)
//			if changed { db.Update(ctx, &u) }
//		}
//		checkpoint = rows[len(rows)-1].ID; save(checkpoint)
//	}
//	// 4. Retire the old versions (keystore's RetireAuxKeys), after which
//	//    IndexTerms and DeterministicTerms stop returning them.
//
// Until step 4 queries search every live version, so lookups find every
// record throughout.
func (c *Crypter) Reindex(ctx context.Context, v any, opts ...CallOption) (changed bool, err error) {
	return c.run(ctx, v, modeReindex, opts)
}

// BlankSearchable empties the blind-index and deterministic fields of the
// struct v points to, in place, and touches nothing else. It needs no key.
//
// Use it when erasing a subject: shredding the subject's DEK makes its
// encrypted fields unreadable, but blind-index terms and deterministic
// values are under per-zone keys that outlive the subject, so whoever holds
// those keys could still confirm a guessed value against them. Blank them
// and store the record again (or delete the row). Encrypt and Reindex
// recompute index fields from their sources, so blank after the last of
// them.
func BlankSearchable(v any) error {
	_, err := (*Crypter)(nil).run(context.Background(), v, modeBlank, nil)
	return err
}

// IndexTerms returns the terms that the blind-index field index (its path,
// such as "EmailIdx") of record type T takes for value in zone, one per live
// version of the index key, newest first. record is a T, a *T (nil is fine)
// or a reflect.Type of either. Select the candidates whose index column holds
// any of the terms, decrypt them and compare: a term is shared, by design, by
// other values too.
//
// Computing a term needs the index key, which only a caller the keyring's
// Policy allows in zone gets: an out-of-zone caller is refused with
// ErrOutsideCustody, as for a decrypt. An empty value has no term (a record
// with an empty source has an empty index field) and is refused with
// ErrInvalidValue.
func (c *Crypter) IndexTerms(ctx context.Context, zone string, record any, index, value string) ([]string, error) {
	keys, spec, v, err := c.indexKeys(ctx, zone, record, index, value)
	if err != nil {
		return nil, err
	}
	if len(keys) == 1 { // the usual case: one allocation
		if termLen(keys[0], spec) <= len(smallTerm{}) {
			return oneTerm[smallTerm](keys[0], spec, v), nil
		}
		return oneTerm[[maxTerm]byte](keys[0], spec, v), nil
	}
	return appendTerms(make([]string, 0, len(keys)), keys, spec, v), nil
}

// AppendIndexTerms is IndexTerms appending the terms to dst: a query loop
// that reuses dst allocates only the terms themselves. On error it returns
// dst unchanged.
func (c *Crypter) AppendIndexTerms(ctx context.Context, dst []string, zone string, record any, index, value string) ([]string, error) {
	keys, spec, v, err := c.indexKeys(ctx, zone, record, index, value)
	if err != nil {
		return dst, err
	}
	return appendTerms(dst, keys, spec, v), nil
}

// indexKeys checks the arguments of IndexTerms and returns the live
// versions of the index key (shared: only to be read), the index and the
// normalised value.
func (c *Crypter) indexKeys(ctx context.Context, zone string, record any, index, value string) ([]*keystore.AuxKey, *indexSpec, string, error) {
	t, p, err := planOf(record)
	if err != nil {
		return nil, nil, "", err
	}
	n := p.indexNode(index)
	if n == nil {
		return nil, nil, "", fmt.Errorf("%w: %s has no blind-index field %q (it has: %s)", ErrInvalidValue, t, index, pathList(p.indexes))
	}
	fail := func(err error) error { return &FieldError{Op: "index", Type: t, Path: index, Zone: zone, Err: err} }
	if value == "" {
		return nil, nil, "", fail(fmt.Errorf("%w: an empty value has no term", ErrInvalidValue))
	}
	if c.search == nil {
		return nil, nil, "", fail(fmt.Errorf("%w: the Keyring does not hold index keys", ErrUnsupportedField))
	}
	var keys []*keystore.AuxKey
	if c.shared != nil {
		keys, err = c.shared.SharedAuxKeys(ctx, zone, keystore.AuxIndex, n.index.name) // only read
	} else {
		keys, err = c.search.AuxKeys(ctx, zone, keystore.AuxIndex, n.index.name)
	}
	if err != nil {
		return nil, nil, "", fail(err)
	}
	return keys, n.index, normalize(value, n.index.norm), nil
}

// sharedAuxKeyring is a SearchKeyring with cheaper hits: it hands out its
// cached list of live key versions to read, without a copy, and the
// current version; *keystore.Keyring is one.
type sharedAuxKeyring interface {
	SharedAuxKeys(ctx context.Context, zone string, purpose keystore.AuxPurpose, name string) ([]*keystore.AuxKey, error)
	CurrentAuxKey(ctx context.Context, zone string, purpose keystore.AuxPurpose, name string) (*keystore.AuxKey, error)
}

// maxTerm bounds the length of a term: a 32-bit version in decimal, ":",
// and at most MaxIndexBits bits in hex.
const maxTerm = 10 + 1 + MaxIndexBits/4

// termBox is the result of indexTerms for one key version in one
// allocation: the slice's array and the term's bytes side by side. B is
// the byte array the term is written to: small for the usual terms, so
// that the allocation is too, or large enough for any.
type termBox[B smallTerm | [maxTerm]byte] struct {
	terms [1]string
	buf   B
}

// smallTerm holds the terms of up to 16 bytes (a 32-byte termBox): those
// of indexes of up to 48 bits under versions below 1,000, for instance;
// termLen picks the box.
type smallTerm [16]byte

// oneTerm returns the term of v under key as the only element of a slice,
// in one allocation.
func oneTerm[B smallTerm | [maxTerm]byte](key *keystore.AuxKey, spec *indexSpec, v string) []string {
	t := new(termBox[B])
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&t.buf)), len(t.buf))
	b := appendTerm(buf[:0], key, spec, v)
	t.terms[0] = unsafe.String(&buf[0], len(b)) // buf is not written again
	return t.terms[:]
}

// termLen returns the length of the term of key under spec.
func termLen(key *keystore.AuxKey, spec *indexSpec) int {
	n := 2 + 2*((spec.bits+7)/8) // a digit, ':', the hex
	for v := key.Version; v >= 10; v /= 10 {
		n++
	}
	return n
}

// appendTerms appends the terms of the normalised value v under keys, in
// their order, to dst.
func appendTerms(dst []string, keys []*keystore.AuxKey, spec *indexSpec, v string) []string {
	for _, k := range keys {
		dst = append(dst, makeTerm(k, spec, v))
	}
	return dst
}

// DeterministicTerms returns the envelopes that the deterministic field
// field (its path, such as "Email") of record type T holds for value in zone,
// one per live version of the field's key, newest first; compare a column
// with each for equality. record is as for IndexTerms, and so are custody and
// an empty value.
func (c *Crypter) DeterministicTerms(ctx context.Context, zone string, record any, field, value string) ([]string, error) {
	t, p, err := planOf(record)
	if err != nil {
		return nil, err
	}
	if p.dets[field] == nil {
		return nil, fmt.Errorf("%w: %s has no deterministic field %q (it has: %s)", ErrInvalidValue, t, field, pathList(p.dets))
	}
	fail := func(err error) error { return &FieldError{Op: "index", Type: t, Path: field, Zone: zone, Err: err} }
	if value == "" {
		return nil, fail(fmt.Errorf("%w: empty values are stored empty, not sealed", ErrInvalidValue))
	}
	if c.search == nil {
		return nil, fail(fmt.Errorf("%w: the Keyring does not hold deterministic keys", ErrUnsupportedField))
	}
	keys, err := c.search.AuxKeys(ctx, zone, keystore.AuxDeterministic, field)
	if err != nil {
		return nil, fail(err)
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		if out[i], err = k.Det().SealString(value, envelope.Binding{Path: field}); err != nil {
			return nil, fail(err)
		}
	}
	return out, nil
}

// SearchKey returns the purpose and name of the keystore key behind the
// blind-index or deterministic field field (its path) of record type T: the
// arguments of the keyring's RotateAuxKey and RetireAuxKeys.
func SearchKey(record any, field string) (keystore.AuxPurpose, string, error) {
	t, p, err := planOf(record)
	if err != nil {
		return "", "", err
	}
	if n := p.indexNode(field); n != nil {
		return keystore.AuxIndex, n.index.name, nil
	}
	if p.dets[field] != nil {
		return keystore.AuxDeterministic, field, nil
	}
	return "", "", fmt.Errorf("%w: %s has no blind-index or deterministic field %q (it has: %s)", ErrInvalidValue, t, field,
		pathList(p.indexes, p.dets))
}

// planOf returns the struct type record stands for and its plan.
func planOf(record any) (reflect.Type, *plan, error) {
	t, ok := record.(reflect.Type)
	if !ok {
		t = reflect.TypeOf(record)
		// A pointer to the record, the usual argument: its plan is
		// found without taking the type apart.
		if p := planOfPointer(t); p != nil && p.err == nil {
			return p.typ, p, nil
		}
	}
	if t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil, nil, fmt.Errorf("%w: want a struct, a pointer to one or its reflect.Type, got %T", ErrInvalidValue, record)
	}
	p := planFor(t)
	if p.err != nil {
		return nil, nil, p.err
	}
	return t, p, nil
}

func pathList(ms ...map[string]*node) string {
	var paths []string
	for _, m := range ms {
		for p := range m {
			paths = append(paths, p)
		}
	}
	if len(paths) == 0 {
		return "none"
	}
	slices.Sort(paths)
	return strings.Join(paths, ", ")
}

// normalize applies the normalisers of n to s, in their fixed order.
func normalize(s string, n Normalizer) string {
	if n&NormTrim != 0 {
		s = strings.TrimSpace(s)
	}
	if n&NormLower != 0 {
		s = strings.ToLower(s)
	}
	if n&NormNFC != 0 {
		s = norm.NFC.String(s)
	}
	return s
}

// indexTerm returns the term of value under key.
func indexTerm(key *keystore.AuxKey, spec *indexSpec, value string) string {
	return makeTerm(key, spec, normalize(value, spec.norm))
}

// makeTerm returns the term of the normalised value v under key as a new
// string, written in place: one allocation of the term's size.
func makeTerm(key *keystore.AuxKey, spec *indexSpec, v string) string {
	b := make([]byte, 0, termLen(key, spec))
	b = appendTerm(b, key, spec, v)
	return unsafe.String(unsafe.SliceData(b), len(b)) // b is not written again
}

// appendTerm appends the term of the normalised value v under key to dst:
// the key's version in decimal, ":", and the first spec.bits bits of
// HMAC-SHA256(key, v) in lowercase hex, in ceil(bits/8) bytes whose unused
// low bits are zero.
func appendTerm(dst []byte, key *keystore.AuxKey, spec *indexSpec, v string) []byte {
	var buf [sha256.Size]byte
	sum := key.MAC(buf[:0], unsafe.Slice(unsafe.StringData(v), len(v)))
	nb := (spec.bits + 7) / 8
	sum = sum[:nb]
	if r := spec.bits % 8; r != 0 {
		sum[nb-1] &= byte(0xff << (8 - r))
	}
	dst = strconv.AppendUint(dst, uint64(key.Version), 10)
	dst = append(dst, ':')
	return hex.AppendEncode(dst, sum)
}

// auxKey returns the current key of purpose and name in the record's zone,
// fetching it once per call.
func (w *walker) auxKey(purpose keystore.AuxPurpose, name string) (*keystore.AuxKey, error) {
	for _, a := range w.aux {
		if a.Purpose == purpose && a.Name == name {
			return a, nil
		}
	}
	var a *keystore.AuxKey
	var err error
	if w.c.shared != nil {
		a, err = w.c.shared.CurrentAuxKey(w.ctx, w.zone, purpose, name)
	} else {
		a, err = w.c.search.AuxKey(w.ctx, w.zone, purpose, name, 0)
	}
	if err != nil {
		return nil, err
	}
	w.aux = append(w.aux, a)
	return a, nil
}

// detKeyFor returns the key a deterministic envelope at path names, checking
// that it is a deterministic key of that path. For Encrypt it must also be
// of the record's zone, except for Reindex, which reseals it.
func (w *walker) detKeyFor(id envelope.KeyID, path string) (*keystore.AuxKey, error) {
	var a *keystore.AuxKey
	for _, c := range w.aux {
		if c.ID == id {
			a = c
			break
		}
	}
	if a == nil {
		var err error
		if a, err = w.c.search.AuxKeyByID(w.ctx, id); err != nil {
			return nil, err
		}
	}
	if a.Purpose != keystore.AuxDeterministic || a.Name != path {
		return nil, fmt.Errorf("%w: the ciphertext was sealed for another field", ErrTampered)
	}
	if w.encrypt && !w.reindex && a.Zone != w.zone {
		return nil, fmt.Errorf("%w: the value is already a ciphertext of another zone (Reindex reseals it)", ErrTampered)
	}
	return a, nil
}

// detLeaf is leaf for a deterministic value: bound to its path only (no
// map key, no subject), sealed under the current (zone, path) key.
func detLeaf[T string | []byte](w *walker, s T, n *node, mapKey string,
	seal, open func(*envelope.DetKey, T, envelope.Binding) (T, error)) (out T, ok bool, err error) {
	b := envelope.Binding{Path: n.path}
	alg, id, sealed := looksSealed(s)
	if sealed && alg != envelope.AlgAES256SIV {
		return out, false, w.fail(n, mapKey, "", errRandomizedInDet)
	}
	if !w.encrypt {
		if !sealed {
			return out, false, plaintext(w, s, n, mapKey)
		}
		key, err := w.detKeyFor(id, n.path)
		if err != nil {
			zone := ""
			if key != nil {
				zone = key.Zone
			}
			return out, false, w.fail(n, mapKey, zone, err)
		}
		if out, err = open(key.Det(), s, b); err != nil {
			return out, false, w.fail(n, mapKey, key.Zone, err)
		}
		return out, true, nil
	}
	cur, err := w.auxKey(keystore.AuxDeterministic, n.path)
	if err != nil {
		return out, false, w.fail(n, mapKey, "", err)
	}
	if sealed {
		// Already encrypted: verify it. Reindex reseals one of an older
		// version (or of another zone) under the current key.
		key, err := w.detKeyFor(id, n.path)
		if err != nil {
			return out, false, w.fail(n, mapKey, "", fmt.Errorf("the value is a ciphertext that cannot be verified: %w", err))
		}
		pt, err := open(key.Det(), s, b)
		if err != nil {
			return out, false, w.fail(n, mapKey, "", err)
		}
		if key.ID == cur.ID || !w.reindex {
			return out, false, nil
		}
		s = pt
	}
	if out, err = seal(cur.Det(), s, b); err != nil {
		return out, false, w.fail(n, mapKey, "", err)
	}
	return out, true, nil
}

// indexField computes the blind-index field f of the struct v (Encrypt,
// Reindex) or empties it (BlankSearchable); Decrypt leaves it.
func (w *walker) indexField(v reflect.Value, f field, mapKey string) error {
	if !w.encrypt && !w.blank {
		return nil
	}
	n := f.node
	target := v.Field(f.index)
	var term string
	if !w.blank {
		if src := v.Field(n.index.src).String(); src != "" {
			pt, err := w.indexSource(src, n.index, mapKey)
			if err != nil {
				return w.fail(n, mapKey, "", err)
			}
			key, err := w.auxKey(keystore.AuxIndex, n.index.name)
			if err != nil {
				return w.fail(n, mapKey, "", err)
			}
			term = indexTerm(key, n.index, pt)
		}
	}
	if target.String() == term {
		return nil
	}
	if !target.CanSet() {
		return w.fail(n, mapKey, "", fmt.Errorf("%w: field is not settable", ErrUnsupportedField))
	}
	w.writes = append(w.writes, write{kind: wString, node: n, mapKey: mapKey, target: target, str: term})
	return nil
}

// indexSource returns the plaintext of an index's source value src: src
// itself, or, when the record is already encrypted, src opened (it must be
// this record's ciphertext, as Encrypt requires).
func (w *walker) indexSource(src string, spec *indexSpec, mapKey string) (string, error) {
	alg, id, sealed := looksSealed(src)
	if !sealed {
		return src, nil
	}
	if spec.srcDet {
		if alg != envelope.AlgAES256SIV {
			return "", errRandomizedInDet
		}
		key, err := w.detKeyFor(id, spec.srcPath)
		if err != nil {
			return "", fmt.Errorf("source %s: %w", spec.srcPath, err)
		}
		return key.Det().OpenString(src, envelope.Binding{Path: spec.srcPath})
	}
	if alg != envelope.AlgAES256GCM {
		return "", errDetInRandomized
	}
	dek, err := w.ownKey(id)
	if err != nil {
		return "", fmt.Errorf("source %s: %w", spec.srcPath, err)
	}
	return dek.OpenString(src, envelope.Binding{Path: spec.srcPath, MapKey: mapKey, Subject: w.subject})
}
