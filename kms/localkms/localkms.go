// Package localkms is a key custodian whose KEK lives in a local file, for
// development, tests and single-host deployments.
//
// Open it by URL through kms.Open (importing this package registers the
// "local" scheme):
//
//	local:///var/lib/zonekey/eu.kek     absolute path
//	local://keys/eu.kek                 relative to the working directory
//	local://keys/eu.kek?create=1        create the file if it is missing (dev mode)
//
// or with [Open]. [CreateKEKFile] makes a new KEK file.
//
// # Threat model
//
// The KEK file's permissions are the only protection of the KEK: anyone who
// can read the file, or a backup of it, can unwrap every zone key wrapped
// under it, wherever they are. There is no attestation check, no audit at
// the custodian and no separation between the process that uses the KEK and
// the KEK itself. Open refuses a file that is readable or writable by group
// or others, but that is a guard against mistakes, not a boundary. For
// production, use a custodian that keeps the KEK out of the process: Vault
// Transit (package kms/vault) or Cloud KMS (package kms/gcpkms).
//
// Destroying KEK versions ([Custodian.DestroyBelow]) or the whole KEK
// ([Custodian.Destroy]) rewrites the file without them, but the old bytes
// may survive on disk (journaling and copy-on-write filesystems, SSD wear
// levelling) and in backups of the file. Crypto-shredding with this driver
// is only as final as the disposal of those copies. Another process that
// read the file before stops using the removed versions at its next Wrap
// or Unwrap, which re-read a replaced file (see Concurrency); what it has
// already unwrapped stays in its memory, as with any custodian.
//
// # File format
//
// The KEK file is a JSON document, written atomically with mode 0600:
//
//	{
//	  "format": "zonekey-local-kek/v1",
//	  "primary": 2,
//	  "versions": [
//	    {"version": 1, "key": "<base64, 32 bytes>", "created": "2025-01-02T03:04:05Z"},
//	    {"version": 2, "key": "<base64, 32 bytes>", "created": "2025-06-01T00:00:00Z"}
//	  ]
//	}
//
// Wrap uses the primary version; Unwrap any version still in the file.
//
// [Custodian.Destroy] leaves a file that records the destruction and holds
// no key, so that neither Open nor Wrap silently makes a new KEK in its
// place:
//
//	{
//	  "format": "zonekey-local-kek/v1",
//	  "primary": 0,
//	  "destroyed": "2025-07-01T00:00:00Z",
//	  "versions": []
//	}
//
// # Ciphertext format
//
// A wrapped key is AES-256-GCM under one KEK version:
//
//	0x01 || KEK version (4 bytes, big-endian) || nonce (12 bytes, random) || ciphertext || tag (16 bytes)
//
// The associated data is the 5-byte header (format byte and KEK version)
// followed by [kms.Binding.Bytes], so a wrapped key opens only under its own
// binding and its own KEK version.
//
// # Concurrency
//
// A Custodian is safe for concurrent use. Rotate, RetireBelow, DestroyBelow
// and Destroy re-read the file, change it and replace it atomically while
// holding an advisory lock on a ".lock" file beside it (flock, on Unix), so
// Custodians of one file in one or several processes never lose each other's
// changes. Wrap and Unwrap first read the file and compare its content with
// what the custodian last read or wrote (not its metadata, which a reused
// inode and a coarse modification time can leave unchanged), and take it up
// if another custodian replaced it, so each takes up the others' rotations
// and destructions at its next Wrap or Unwrap; Versions reports
// what was last read. A KEK file that can no longer be read fails Wrap and
// Unwrap with kms.ErrConfig. Where the system has no flock, concurrent
// changes by several processes are not supported.
package localkms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

// Scheme is the URL scheme under which this package registers its opener
// with package kms.
const Scheme = "local"

// Format is the value of the "format" field of a KEK file this package
// reads and writes.
const Format = "zonekey-local-kek/v1"

// MaxKeySize is the longest key Wrap accepts, in bytes. Zone keys are 32.
const MaxKeySize = 64

// Limits and sizes.
const (
	kekSize        = 32      // AES-256
	maxFileSize    = 1 << 20 // bytes of JSON accepted in a KEK file
	maxVersions    = 4096    // KEK versions accepted in a KEK file
	formatV1       = 0x01    // first byte of a wrapped key
	headerSize     = 1 + 4   // format byte and KEK version
	nonceSize      = 12
	tagSize        = 16
	minCiphertext  = headerSize + nonceSize + 1 + tagSize
	maxCiphertext  = headerSize + nonceSize + MaxKeySize + tagSize
	maxBindingText = math.MaxUint16 // Binding.Bytes encodes string lengths in 16 bits
)

func init() {
	kms.Register(Scheme, openURL)
}

// Option configures Open.
type Option func(*options)

type options struct {
	create bool
}

// WithCreate makes Open create the KEK file, with one fresh KEK version, if
// it does not exist. Meant for development: in production a missing KEK
// file is a misconfiguration that must not silently become a new key.
func WithCreate() Option {
	return func(o *options) { o.create = true }
}

// Custodian holds the KEK versions of one KEK file. It implements
// kms.Custodian.
type Custodian struct {
	path string // absolute

	mu   sync.RWMutex
	ring *keyring // nil once closed
	// sum is the SHA-256 of the file content ring was read from or
	// written as: Wrap and Unwrap compare it with the file at path and
	// take up a file another custodian has replaced (refresh).
	sum [sha256.Size]byte
}

var (
	_ kms.Custodian  = (*Custodian)(nil)
	_ kms.KeyManager = (*Custodian)(nil)
	_ kms.Destroyer  = (*Custodian)(nil)
)

// keyring is the in-memory form of a KEK file. It holds only ciphers: the
// raw key bytes are wiped as soon as the ciphers are built.
type keyring struct {
	primary   uint32
	minLive   uint32   // versions below refuse to unwrap (RetireBelow)
	versions  []uint32 // ascending
	aeads     map[uint32]cipher.AEAD
	destroyed time.Time // when the KEK was destroyed (Destroy); zero if it was not
}

// Open opens the KEK file at path (made absolute against the working
// directory). Errors wrap kms.ErrConfig when the file is missing (unless
// WithCreate is given), malformed, not a regular file, or readable or
// writable by group or others. A file whose KEK was destroyed
// ([Custodian.Destroy]) opens, even with WithCreate, as a custodian whose
// every operation fails with kms.ErrUnknownKey.
func Open(path string, opts ...Option) (*Custodian, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if path == "" {
		return nil, fmt.Errorf("%w: localkms: empty KEK file path", kms.ErrConfig)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%w: localkms: KEK file path %s: %v", kms.ErrConfig, path, err)
	}
	if o.create {
		// If another process creates the file first, use that one.
		if err := CreateKEKFile(abs); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
	}
	doc, sum, err := readKEKFile(abs)
	if err != nil {
		return nil, err
	}
	defer doc.wipe()
	ring, err := doc.keyring()
	if err != nil {
		return nil, err
	}
	return &Custodian{path: abs, ring: ring, sum: sum}, nil
}

// openURL is the kms.Opener of the "local" scheme.
func openURL(ctx context.Context, u *url.URL) (kms.Custodian, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path, opts, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	c, err := Open(path, opts...)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// parseURL turns local:///abs/path or local://rel/path into a file path.
func parseURL(u *url.URL) (string, []Option, error) {
	bad := func(format string, args ...any) (string, []Option, error) {
		return "", nil, fmt.Errorf("%w: localkms: URL %s: %s (want local:///absolute/path or local://relative/path)",
			kms.ErrConfig, kms.RedactedURL(u), fmt.Sprintf(format, args...))
	}
	switch {
	case u.Scheme != Scheme:
		return bad("scheme is not %q", Scheme)
	case u.Opaque != "":
		return bad("missing // after the scheme")
	case u.User != nil:
		return bad("user information is not allowed")
	case u.Port() != "" || (u.Host != "" && u.Hostname() != u.Host):
		return bad("a host:port is not allowed; the host part is the first element of a relative path")
	case u.Fragment != "":
		return bad("a fragment is not allowed")
	}
	path := u.Host + u.Path
	if path == "" {
		return bad("no file path")
	}
	var opts []Option
	query, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("malformed query")
	}
	for k, vs := range query {
		switch k {
		case "create":
			if len(vs) != 1 {
				return bad("parameter create given %d times", len(vs))
			}
			create, err := strconv.ParseBool(vs[0])
			if err != nil {
				return bad("parameter create=%q is not a boolean", vs[0])
			}
			if create {
				opts = append(opts, WithCreate())
			}
		default:
			return bad("unknown parameter %q", k)
		}
	}
	return filepath.FromSlash(path), opts, nil
}

// CreateKEKFile creates a new KEK file at path with one fresh KEK version,
// atomically and with mode 0600. It never overwrites: if path exists, the
// error wraps both kms.ErrConfig and fs.ErrExist. The directory must exist.
func CreateKEKFile(path string) error {
	if path == "" {
		return fmt.Errorf("%w: localkms: empty KEK file path", kms.ErrConfig)
	}
	key := make([]byte, kekSize)
	rand.Read(key)
	doc := &kekFile{
		Format:   Format,
		Primary:  1,
		Versions: []kekVersion{{Version: 1, Key: key, Created: now()}},
	}
	defer doc.wipe()
	data, err := doc.marshal()
	if err != nil {
		return err
	}
	defer clear(data)

	dir := filepath.Dir(path)
	tmp, err := writeTemp(dir, filepath.Base(path), data)
	if err != nil {
		return err
	}
	// A hard link, unlike a rename, fails if path exists: the file appears
	// complete or not at all, and an existing KEK is never replaced.
	err = os.Link(tmp, path)
	// After a successful link the temporary name is a second name of the
	// new file, not a copy of the key; removing it is tidying.
	_ = os.Remove(tmp)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: localkms: KEK file %s already exists; refusing to overwrite it: %w", kms.ErrConfig, path, fs.ErrExist)
		}
		return fmt.Errorf("%w: localkms: creating KEK file %s: %v", kms.ErrConfig, path, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("%w: localkms: KEK file %s created, but its directory could not be synced: %v", kms.ErrConfig, path, err)
	}
	return nil
}

// Path returns the absolute path of the KEK file.
func (c *Custodian) Path() string { return c.path }

// Wrap encrypts key, 1 to MaxKeySize bytes, under the primary KEK version,
// bound to b.
func (c *Custodian) Wrap(ctx context.Context, key []byte, b kms.Binding) (kms.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return kms.Wrapped{}, err
	}
	if err := c.refresh("wrap"); err != nil {
		return kms.Wrapped{}, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ring == nil {
		return kms.Wrapped{}, c.closedError("wrap")
	}
	if len(key) == 0 || len(key) > MaxKeySize {
		return kms.Wrapped{}, fmt.Errorf("%w: localkms: wrap %v: key is %d bytes, want 1 to %d", errs.InvalidValue, b, len(key), MaxKeySize)
	}
	if err := b.Validate(); err != nil {
		return kms.Wrapped{}, fmt.Errorf("localkms: wrap: %w", err)
	}
	if err := checkBinding(b); err != nil {
		return kms.Wrapped{}, fmt.Errorf("%w: localkms: wrap: %v", kms.ErrConfig, err)
	}
	if c.ring.isDestroyed() {
		return kms.Wrapped{}, c.destroyedError("wrap", c.ring)
	}
	v := c.ring.primary
	aead := c.ring.aeads[v]

	out := make([]byte, headerSize, headerSize+aead.Overhead()+len(key))
	out[0] = formatV1
	binary.BigEndian.PutUint32(out[1:headerSize], v)
	out = aead.Seal(out, nil, key, associatedData(out[:headerSize], b))
	return kms.Wrapped{Ciphertext: out, KEKVersion: v}, nil
}

// Unwrap decrypts w, which must have been wrapped for binding b. Any
// malformed or altered ciphertext, a binding other than the one it was
// wrapped for, or a w.KEKVersion (when not 0) other than the version in the
// ciphertext fail with kms.ErrTampered; a KEK version that is not in the
// file fails with kms.ErrUnknownKey.
func (c *Custodian) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.refresh("unwrap"); err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ring == nil {
		return nil, c.closedError("unwrap")
	}
	tampered := func(why string) error {
		return fmt.Errorf("%w: localkms: unwrap %v: %s", kms.ErrTampered, b, why)
	}
	ct := w.Ciphertext
	switch {
	case len(ct) < minCiphertext:
		return nil, tampered(fmt.Sprintf("ciphertext is %d bytes, too short", len(ct)))
	case len(ct) > maxCiphertext:
		return nil, tampered(fmt.Sprintf("ciphertext is %d bytes, too long", len(ct)))
	case ct[0] != formatV1:
		return nil, tampered(fmt.Sprintf("unknown ciphertext format 0x%02x", ct[0]))
	}
	v := binary.BigEndian.Uint32(ct[1:headerSize])
	switch {
	case v == 0:
		return nil, tampered("ciphertext names KEK version 0")
	case w.KEKVersion != 0 && v != w.KEKVersion:
		return nil, tampered(fmt.Sprintf("ciphertext names KEK version %d, not %d", v, w.KEKVersion))
	}
	if err := checkBinding(b); err != nil {
		// Nothing can have been wrapped under such a binding.
		return nil, tampered(err.Error())
	}
	if c.ring.isDestroyed() {
		return nil, c.destroyedError("unwrap", c.ring)
	}
	aead, ok := c.ring.aeads[v]
	if !ok {
		return nil, fmt.Errorf("%w: localkms: unwrap %v: KEK version %d is not in %s", kms.ErrUnknownKey, b, v, c.path)
	}
	if v < c.ring.minLive {
		return nil, fmt.Errorf("%w: localkms: unwrap %v: KEK version %d is retired (below %d) in %s", kms.ErrUnknownKey, b, v, c.ring.minLive, c.path)
	}
	key, err := aead.Open(nil, nil, ct[headerSize:], associatedData(ct[:headerSize], b))
	if err != nil {
		return nil, tampered(fmt.Sprintf("authentication under KEK version %d failed", v))
	}
	return key, nil
}

// Close forgets the KEK. Later calls of Wrap, Unwrap and the key
// management methods (Rotate, DestroyBelow, Destroy, ...) return an error
// wrapping errs.Closed; Close itself may be called again and returns nil.
//
// The raw key bytes were already wiped when the file was read; what remains
// is the AES key schedule inside crypto/aes, which cannot be wiped from
// outside that package and is left to the garbage collector.
func (c *Custodian) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring != nil {
		clear(c.ring.aeads)
		c.ring = nil
	}
	return nil
}

// Versions returns the KEK versions this custodian holds, ascending: those
// of the file as last read by Open, a change (Rotate, DestroyBelow,
// Destroy, ...), Wrap or Unwrap. It returns an empty slice once the KEK is destroyed, and
// nil once the custodian is closed.
func (c *Custodian) Versions() []uint32 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ring == nil {
		return nil
	}
	return slices.Clone(c.ring.versions)
}

// Rotate adds a new KEK version to the file, numbered one above the highest
// version in it, and makes it the primary version, under which Wrap wraps
// from now on. Older versions stay and still unwrap. The file is re-read
// before the change and replaced atomically; the custodian then holds what
// the file holds. It returns the new version.
func (c *Custodian) Rotate(ctx context.Context) (uint32, error) {
	var next uint32
	err := c.change(ctx, "rotate", func(doc *kekFile) error {
		last := doc.Versions[len(doc.Versions)-1].Version
		switch {
		case last == math.MaxUint32:
			return fmt.Errorf("%w: localkms: rotate %s: KEK version numbers exhausted", kms.ErrConfig, c.path)
		case len(doc.Versions) >= maxVersions:
			return fmt.Errorf("%w: localkms: rotate %s: the file holds %d versions, the most allowed; destroy old versions first",
				kms.ErrConfig, c.path, len(doc.Versions))
		}
		key := make([]byte, kekSize)
		rand.Read(key)
		next = last + 1
		doc.Versions = append(doc.Versions, kekVersion{Version: next, Key: key, Created: now()})
		doc.Primary = next
		return c.replace(doc)
	})
	if err != nil {
		return 0, err
	}
	return next, nil
}

// change runs fn on the KEK file's content under the custodian's lock and
// the file's cross-process lock, after checking ctx and that the custodian
// is open. fn replaces the file (c.replace) if it changes anything. If the
// file records that the KEK was destroyed, the custodian takes that up and
// change fails with kms.ErrUnknownKey without calling fn.
func (c *Custodian) change(ctx context.Context, op string, fn func(doc *kekFile) error) error {
	return c.changeFile(ctx, op, func(doc *kekFile) error {
		if doc.isDestroyed() {
			return c.destroyedError(op, c.ring) // changeFile took it up
		}
		return fn(doc)
	})
}

// changeFile is change without the check for a destroyed KEK.
func (c *Custodian) changeFile(ctx context.Context, op string, fn func(doc *kekFile) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring == nil {
		return c.closedError(op)
	}
	unlock, err := c.lockFile()
	if err != nil {
		return err
	}
	defer unlock()
	// Hold what the file holds now, whatever fn does.
	doc, err := c.loadLocked()
	if err != nil {
		return err
	}
	defer doc.wipe()
	return fn(doc)
}

// loadLocked reads the KEK file and makes what it holds the custodian's
// state. It returns the file's content, which the caller must wipe. c.mu
// must be held for writing.
func (c *Custodian) loadLocked() (*kekFile, error) {
	doc, sum, err := readKEKFile(c.path)
	if err != nil {
		return nil, err
	}
	ring, err := doc.keyring()
	if err != nil {
		doc.wipe()
		return nil, err
	}
	clear(c.ring.aeads)
	c.ring, c.sum = ring, sum
	return doc, nil
}

// refresh takes up the KEK file if another custodian (another process, or
// another Custodian of the same file) has replaced it since this one read
// or wrote it, so that versions it destroyed stop unwrapping here and a
// version it added becomes the primary here too. It reads the file and
// compares its content: a file's metadata can look unchanged after a
// change (a reused inode, the same size, a coarse modification time). Wrap
// and Unwrap call it, which a keyring does once per zone key per cache
// lifetime. A file that can no longer be read fails the call: the
// custodian does not go on with keys the file may no longer hold.
func (c *Custodian) refresh(op string) error {
	doc, sum, err := readKEKFile(c.path)
	if err != nil {
		return fmt.Errorf("localkms: %s: %w", op, err)
	}
	doc.wipe()
	c.mu.RLock()
	same, closed := sum == c.sum, c.ring == nil
	c.mu.RUnlock()
	if same || closed {
		return nil // closed: the caller reports it
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring == nil || sum == c.sum {
		return nil
	}
	// Read it again under the lock: this custodian may have replaced the
	// file itself since the read above.
	doc, err = c.loadLocked()
	if err != nil {
		return err
	}
	doc.wipe()
	return nil
}

// DestroyBelow removes every KEK version lower than v from the file. Keys
// wrapped under a removed version then fail to unwrap with
// kms.ErrUnknownKey, here, in any custodian that opens the file later,
// and in one of the same file from its next Wrap or Unwrap.
// It refuses to remove the primary version (v greater than the primary).
// If no version is below v the file is left as it is. See the package
// documentation for what removal from the file does and does not erase.
func (c *Custodian) DestroyBelow(ctx context.Context, v uint32) error {
	return c.change(ctx, "destroy versions", func(doc *kekFile) error {
		if v > doc.Primary {
			return fmt.Errorf("%w: localkms: destroy KEK versions below %d in %s: that would destroy the primary version %d",
				errs.InvalidValue, v, c.path, doc.Primary)
		}
		keep := slices.IndexFunc(doc.Versions, func(kv kekVersion) bool { return kv.Version >= v })
		if keep <= 0 {
			return nil // nothing to remove; changeFile took up the file
		}
		for i := range doc.Versions[:keep] {
			clear(doc.Versions[i].Key)
		}
		doc.Versions = doc.Versions[keep:]
		return c.replace(doc)
	})
}

// lockFile takes the cross-process lock of the KEK file (a ".lock" file
// beside the file a symbolic link points to), held while the file is read,
// changed and replaced.
func (c *Custodian) lockFile() (func(), error) {
	target, err := filepath.EvalSymlinks(c.path)
	if err != nil {
		return nil, fmt.Errorf("%w: localkms: KEK file %s: %v", kms.ErrConfig, c.path, err)
	}
	unlock, err := lockPath(target + ".lock")
	if err != nil {
		return nil, fmt.Errorf("%w: localkms: locking KEK file %s: %v", kms.ErrConfig, target, err)
	}
	return unlock, nil
}

// replace writes doc over the KEK file and makes it the custodian's state.
// c.mu must be held.
func (c *Custodian) replace(doc *kekFile) error {
	ring, err := doc.keyring()
	if err != nil {
		return err
	}
	data, err := doc.marshal()
	if err != nil {
		return err
	}
	defer clear(data)
	// Replace the file a symbolic link points to, not the link.
	target, err := filepath.EvalSymlinks(c.path)
	if err != nil {
		return fmt.Errorf("%w: localkms: KEK file %s: %v", kms.ErrConfig, c.path, err)
	}
	dir := filepath.Dir(target)
	tmp, err := writeTemp(dir, filepath.Base(target), data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, target); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%w: localkms: replacing KEK file %s: %v", kms.ErrConfig, target, err)
	}
	// The file has changed: hold what it holds, whatever happens next.
	c.ring, c.sum = ring, sha256.Sum256(data)
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("%w: localkms: KEK file %s replaced, but its directory could not be synced: %v", kms.ErrConfig, target, err)
	}
	return nil
}

// Destroy erases every KEK version from the file, irrevocably, for the
// shred of the whole zone: keys wrapped under the KEK can no longer be
// unwrapped by any custodian that reads the file from now on. The file
// stays, holding no key and the time of the destruction, so that neither
// Open (with WithCreate or create=1 too) nor Wrap ever makes a new KEK in
// its place. Afterwards Wrap, Unwrap, Rewrap, Rotate, KEKVersions,
// RetireBelow and DestroyBelow fail with kms.ErrUnknownKey, here and in
// every custodian that opens the file or changes it later. Destroying a
// destroyed KEK succeeds and leaves the file as it is.
//
// Like every change, Destroy holds the file's cross-process lock while it
// reads and replaces the file. Another process that read the file before
// refuses too from its next Wrap or Unwrap, which re-read a replaced file;
// see the package documentation for what removal from the file does and
// does not erase on disk.
func (c *Custodian) Destroy(ctx context.Context) error {
	return c.changeFile(ctx, "destroy", func(doc *kekFile) error {
		if doc.isDestroyed() {
			return nil // changeFile took it up
		}
		doc.wipe()
		doc.Versions = []kekVersion{}
		doc.Primary = 0
		doc.MinDecrypt = 0
		doc.Destroyed = now()
		return c.replace(doc)
	})
}

// destroyedError reports that the KEK of ring was destroyed.
func (c *Custodian) destroyedError(op string, ring *keyring) error {
	return fmt.Errorf("%w: localkms: %s: the KEK in %s was destroyed on %s",
		kms.ErrUnknownKey, op, c.path, ring.destroyed.Format(time.RFC3339))
}

func (c *Custodian) closedError(op string) error {
	return fmt.Errorf("localkms: %s: custodian for %s is closed: %w", op, c.path, errs.Closed)
}

// associatedData returns header || b.Bytes().
func associatedData(header []byte, b kms.Binding) []byte {
	return append(bytes.Clone(header), b.Bytes()...)
}

// checkBinding refuses bindings that Binding.Bytes cannot encode
// unambiguously.
func checkBinding(b kms.Binding) error {
	if len(b.Zone) > maxBindingText || len(b.KeyID) > maxBindingText {
		return fmt.Errorf("binding zone or key id longer than %d bytes", maxBindingText)
	}
	return nil
}

// kekFile is the JSON form of a KEK file.
type kekFile struct {
	Format  string `json:"format"`
	Primary uint32 `json:"primary"`
	// MinDecrypt, when set, makes versions below it refuse to unwrap
	// (RetireBelow); unlike DestroyBelow it can be lowered again.
	MinDecrypt uint32 `json:"min_decrypt,omitempty"`
	// Destroyed, when set, is when Destroy erased every version: the
	// file then holds none, and Primary is 0.
	Destroyed time.Time    `json:"destroyed,omitzero"`
	Versions  []kekVersion `json:"versions"`
}

// isDestroyed reports whether the file records a destroyed KEK.
func (d *kekFile) isDestroyed() bool { return !d.Destroyed.IsZero() }

// isDestroyed reports whether the KEK was destroyed.
func (r *keyring) isDestroyed() bool { return !r.destroyed.IsZero() }

type kekVersion struct {
	Version uint32    `json:"version"`
	Key     []byte    `json:"key"`
	Created time.Time `json:"created,omitzero"`
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }

// readKEKFile reads, checks and parses the KEK file at path. The caller
// must wipe the result.
func readKEKFile(path string) (*kekFile, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	// Stat first: opening a named pipe would block until a writer comes.
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, sum, fmt.Errorf("%w: localkms: KEK file %s is not a regular file (mode %v)", kms.ErrConfig, path, fi.Mode())
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, sum, fmt.Errorf("%w: localkms: KEK file %s does not exist (create it with localkms.CreateKEKFile, or add ?create=1 to the URL in development): %w",
				kms.ErrConfig, path, fs.ErrNotExist)
		}
		return nil, sum, fmt.Errorf("%w: localkms: opening KEK file: %v", kms.ErrConfig, err)
	}
	defer f.Close()
	// Check the file that was opened, not the path, which may change.
	fi, err := f.Stat()
	if err != nil {
		return nil, sum, fmt.Errorf("%w: localkms: KEK file %s: %v", kms.ErrConfig, path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, sum, fmt.Errorf("%w: localkms: KEK file %s is not a regular file (mode %v)", kms.ErrConfig, path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, sum, fmt.Errorf("%w: localkms: KEK file %s has mode %04o, which lets group or others access it; restrict it with: chmod 600 %s",
			kms.ErrConfig, path, perm, path)
	}
	if fi.Size() > maxFileSize {
		return nil, sum, fmt.Errorf("%w: localkms: KEK file %s is %d bytes, more than the %d allowed", kms.ErrConfig, path, fi.Size(), maxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	defer clear(data)
	if err != nil {
		return nil, sum, fmt.Errorf("%w: localkms: reading KEK file %s: %v", kms.ErrConfig, path, err)
	}
	if len(data) > maxFileSize {
		return nil, sum, fmt.Errorf("%w: localkms: KEK file %s is more than %d bytes", kms.ErrConfig, path, maxFileSize)
	}
	doc, err := parseKEKFile(data)
	if err != nil {
		return nil, sum, fmt.Errorf("%w: localkms: KEK file %s is malformed: %v", kms.ErrConfig, path, err)
	}
	return doc, sha256.Sum256(data), nil
}

// parseKEKFile decodes and validates a KEK file. Its errors never quote the
// file's content.
func parseKEKFile(data []byte) (*kekFile, error) {
	doc := new(kekFile)
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(doc)
	if err == nil {
		var rest json.RawMessage
		if dec.Decode(&rest) != io.EOF {
			clear(rest)
			err = errors.New("data after the JSON document")
		}
	}
	if err != nil {
		doc.wipe()
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			// A syntax error quotes the offending character.
			return nil, fmt.Errorf("invalid JSON at offset %d", syntax.Offset)
		}
		return nil, err
	}
	if err := doc.validate(); err != nil {
		doc.wipe()
		return nil, err
	}
	return doc, nil
}

func (d *kekFile) validate() error {
	if d.Format != Format {
		return fmt.Errorf("format is %q, want %q", d.Format, Format)
	}
	if d.isDestroyed() {
		if len(d.Versions) != 0 || d.Primary != 0 || d.MinDecrypt != 0 {
			return errors.New("the KEK is marked destroyed, but the file still names or holds versions")
		}
		return nil
	}
	if len(d.Versions) == 0 {
		return errors.New("no KEK versions")
	}
	if len(d.Versions) > maxVersions {
		return fmt.Errorf("%d KEK versions, more than the %d allowed", len(d.Versions), maxVersions)
	}
	slices.SortFunc(d.Versions, func(a, b kekVersion) int {
		switch {
		case a.Version < b.Version:
			return -1
		case a.Version > b.Version:
			return 1
		}
		return 0
	})
	primary := false
	for i, kv := range d.Versions {
		switch {
		case kv.Version == 0:
			return errors.New("KEK version 0 (versions start at 1)")
		case i > 0 && kv.Version == d.Versions[i-1].Version:
			return fmt.Errorf("KEK version %d appears twice", kv.Version)
		case len(kv.Key) != kekSize:
			return fmt.Errorf("key of KEK version %d is %d bytes, want %d", kv.Version, len(kv.Key), kekSize)
		}
		primary = primary || kv.Version == d.Primary
	}
	if !primary {
		return fmt.Errorf("primary KEK version %d is not in the file", d.Primary)
	}
	if d.MinDecrypt > d.Primary {
		return fmt.Errorf("min_decrypt %d is above the primary KEK version %d", d.MinDecrypt, d.Primary)
	}
	return nil
}

// keyring builds the ciphers of d's versions.
func (d *kekFile) keyring() (*keyring, error) {
	r := &keyring{primary: d.Primary, minLive: d.MinDecrypt, destroyed: d.Destroyed,
		versions: make([]uint32, 0, len(d.Versions)), aeads: make(map[uint32]cipher.AEAD, len(d.Versions))}
	for _, kv := range d.Versions {
		block, err := aes.NewCipher(kv.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: localkms: KEK version %d: %v", kms.ErrConfig, kv.Version, err)
		}
		aead, err := cipher.NewGCMWithRandomNonce(block)
		if err != nil {
			return nil, fmt.Errorf("%w: localkms: KEK version %d: %v", kms.ErrConfig, kv.Version, err)
		}
		r.aeads[kv.Version] = aead
		r.versions = append(r.versions, kv.Version)
	}
	return r, nil
}

// marshal encodes d. The caller must wipe the result.
func (d *kekFile) marshal() ([]byte, error) {
	data, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("%w: localkms: encoding KEK file: %v", kms.ErrConfig, err)
	}
	return append(data, '\n'), nil
}

// wipe zeroes the key material of d, best-effort.
func (d *kekFile) wipe() {
	if d == nil {
		return
	}
	for i := range d.Versions {
		clear(d.Versions[i].Key)
	}
}

// writeTemp writes data to a new file in dir with mode 0600, flushes it to
// stable storage and returns its name.
func writeTemp(dir, base string, data []byte) (name string, err error) {
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("%w: localkms: creating temporary KEK file in %s: %v", kms.ErrConfig, dir, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	// CreateTemp uses 0600 already; Chmod makes it so whatever the umask.
	if err := f.Chmod(0o600); err != nil {
		return "", fmt.Errorf("%w: localkms: temporary KEK file %s: %v", kms.ErrConfig, f.Name(), err)
	}
	if _, err := f.Write(data); err != nil {
		return "", fmt.Errorf("%w: localkms: writing temporary KEK file %s: %v", kms.ErrConfig, f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("%w: localkms: syncing temporary KEK file %s: %v", kms.ErrConfig, f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("%w: localkms: closing temporary KEK file %s: %v", kms.ErrConfig, f.Name(), err)
	}
	return f.Name(), nil
}

// syncDir flushes dir's entries, so that a rename or link in it is durable.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be opened for syncing there
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Rewrap unwraps w and wraps the key again under the primary version. The
// zone key passes through this process's memory, as every local operation
// does.
func (c *Custodian) Rewrap(ctx context.Context, w kms.Wrapped, b kms.Binding) (kms.Wrapped, error) {
	key, err := c.Unwrap(ctx, w, b)
	if err != nil {
		return kms.Wrapped{}, err
	}
	defer clear(key)
	return c.Wrap(ctx, key, b)
}

// KEKVersions returns the oldest version that still unwraps and the primary
// version, as the custodian last read them from the file.
func (c *Custodian) KEKVersions(ctx context.Context) (minLive, primary uint32, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ring == nil {
		return 0, 0, c.closedError("list versions")
	}
	if c.ring.isDestroyed() {
		return 0, 0, c.destroyedError("list versions", c.ring)
	}
	minLive = c.ring.primary
	for _, v := range c.ring.versions {
		if v >= c.ring.minLive {
			minLive = v
			break
		}
	}
	return minLive, c.ring.primary, nil
}

// RetireBelow makes versions below v refuse to unwrap, recording the bound
// in the file; a later call may lower it again. v must not exceed the
// primary version.
func (c *Custodian) RetireBelow(ctx context.Context, v uint32) error {
	return c.change(ctx, "retire versions", func(doc *kekFile) error {
		if v > doc.Primary {
			return fmt.Errorf("%w: localkms: retire KEK versions below %d in %s: that would retire the primary version %d",
				errs.InvalidValue, v, c.path, doc.Primary)
		}
		doc.MinDecrypt = v
		return c.replace(doc)
	})
}
