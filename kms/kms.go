// Package kms defines the interface of a key custodian: the party that holds a
// zone's key-encryption key (KEK) and wraps and unwraps that zone's zone keys
// with it, without ever releasing the KEK itself.
//
// A custodian does exactly two things, in the spirit of age's Recipient and
// Identity: Wrap a zone key bound to its identity, and Unwrap it again for the
// same identity. Everything else (which zone key is current, which DEKs it
// protects, caching) is the keystore's job.
//
// Drivers live in sibling packages and register a URL scheme:
//
//	local:///var/lib/zonekey/eu.kek   package kms/localkms
//	vault://host:8200/transit/keys/eu package kms/vault
//	gcpkms://projects/...             package kms/gcpkms
//
// Open picks the driver by the URL's scheme. Every driver passes the shared
// conformance suite in package kms/kmstest.
package kms

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"sync"

	"github.com/zonekey/zonekey/internal/errs"
)

// Errors a custodian returns, wrapped with detail. They are the same values as
// the sentinels of package zonekey.
var (
	// ErrUnavailable reports that the custodian could not be reached or
	// failed transiently (network error, 5xx, throttling). The operation
	// may succeed if retried later; nothing was changed.
	ErrUnavailable = errs.KMSUnavailable
	// ErrTampered reports that a wrapped key did not authenticate under the
	// KEK for the binding given: it was altered, or it belongs to another
	// zone key (a relabelled row). Retrying cannot help.
	ErrTampered = errs.Tampered
	// ErrUnknownKey reports that the KEK, or the KEK version a wrapped key
	// names, does not exist at the custodian (never created, or destroyed).
	ErrUnknownKey = errs.UnknownKey
	// ErrDenied reports that the custodian refused the caller, for example
	// because its credentials do not grant access to this zone's KEK.
	ErrDenied = errs.Denied
	// ErrConfig reports an invalid custodian URL or configuration.
	ErrConfig = errs.KMSConfig
)

// Binding is the identity of a zone key. A custodian binds it to the wrapped
// key (as AEAD associated data, or as a Vault Transit derivation context), so
// that a wrapped key unwraps only under the binding it was wrapped with.
type Binding struct {
	Zone    string // custody zone, e.g. "eu"
	KeyID   string // the zone key's unique id
	Version uint32 // the zone key's version within its zone
}

// MaxBindingString bounds Binding.Zone and Binding.KeyID in bytes, so that
// their 16-bit length prefixes in Bytes are exact.
const MaxBindingString = 1<<16 - 1

// Validate reports whether b can be encoded unambiguously: Zone and KeyID
// non-empty and at most MaxBindingString bytes, Version at least 1. Drivers
// refuse invalid bindings with an error wrapping ErrConfig.
func (b Binding) Validate() error {
	if b.Zone == "" || b.KeyID == "" || b.Version == 0 {
		return fmt.Errorf("%w: incomplete binding %s", ErrConfig, b)
	}
	if len(b.Zone) > MaxBindingString || len(b.KeyID) > MaxBindingString {
		return fmt.Errorf("%w: binding strings longer than %d bytes", ErrConfig, MaxBindingString)
	}
	return nil
}

// Bytes returns the canonical, unambiguous encoding of a valid b (see
// Validate), suitable as associated data: a domain-separation label, then
// each string with a 16-bit length prefix, then the version as 4 big-endian
// bytes.
func (b Binding) Bytes() []byte {
	const label = "zonekey/zone-key/v1"
	out := make([]byte, 0, len(label)+2+len(b.Zone)+2+len(b.KeyID)+4)
	out = append(out, label...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(b.Zone)))
	out = append(out, b.Zone...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(b.KeyID)))
	out = append(out, b.KeyID...)
	out = binary.BigEndian.AppendUint32(out, b.Version)
	return out
}

// String returns a short description of b for errors and logs.
func (b Binding) String() string {
	return fmt.Sprintf("zone=%q key=%q v%d", b.Zone, b.KeyID, b.Version)
}

// Wrapped is a zone key encrypted under a KEK.
type Wrapped struct {
	// Ciphertext is the custodian's opaque output. It is stored by the
	// keystore and handed back unchanged to Unwrap.
	Ciphertext []byte
	// KEKVersion is the version of the KEK that produced Ciphertext, as the
	// custodian numbers its key versions (starting at 1).
	KEKVersion uint32
}

// Custodian wraps and unwraps zone keys under a KEK it never releases.
//
// Implementations must be safe for concurrent use. Errors wrap one of the
// package's sentinels where one applies; context cancellation is returned as
// the context's error.
type Custodian interface {
	// Wrap encrypts key under the current KEK version, bound to b.
	Wrap(ctx context.Context, key []byte, b Binding) (Wrapped, error)
	// Unwrap decrypts w, which must have been produced for the same
	// binding b; otherwise it fails with ErrTampered.
	Unwrap(ctx context.Context, w Wrapped, b Binding) ([]byte, error)
	// Close releases the custodian's resources.
	Close() error
}

// Opener opens a custodian from a URL of its scheme.
type Opener func(ctx context.Context, u *url.URL) (Custodian, error)

var (
	openersMu sync.RWMutex
	openers   = map[string]Opener{}
)

// Register makes a driver available under a URL scheme. Drivers call it from
// an init function. It panics if the scheme is registered twice, as
// database/sql.Register does, since that is a programming error.
func Register(scheme string, open Opener) {
	openersMu.Lock()
	defer openersMu.Unlock()
	if _, dup := openers[scheme]; dup {
		panic("kms: Register called twice for scheme " + scheme)
	}
	openers[scheme] = open
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	openersMu.RLock()
	defer openersMu.RUnlock()
	out := make([]string, 0, len(openers))
	for s := range openers {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// CheckURL reports whether rawURL parses and names a registered scheme,
// without opening anything: what Open would refuse first.
func CheckURL(rawURL string) error {
	_, _, err := opener(rawURL)
	return err
}

// Open opens the custodian that rawURL names, with the driver registered for
// its scheme. The driver's package must be imported (package zonekey imports
// the local driver).
func Open(ctx context.Context, rawURL string) (Custodian, error) {
	u, open, err := opener(rawURL)
	if err != nil {
		return nil, err
	}
	return open(ctx, u)
}

// opener parses rawURL and returns the opener registered for its scheme.
func opener(rawURL string) (*url.URL, Opener, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: custodian URL: %v", ErrConfig, URLErrorReason(err))
	}
	openersMu.RLock()
	open, ok := openers[u.Scheme]
	openersMu.RUnlock()
	if !ok {
		return nil, nil, fmt.Errorf("%w: no custodian driver for scheme %q (registered: %v)", ErrConfig, u.Scheme, Schemes())
	}
	return u, open, nil
}

// URLErrorReason returns the reason of a url.Parse error without the URL
// the error quotes, whose user information may hold a credential: for
// drivers' errors about their URLs.
func URLErrorReason(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// RedactedURL returns u as a string without its user information, which
// may hold a credential (url.URL.Redacted hides only a password): for
// errors and logs.
func RedactedURL(u *url.URL) string {
	shown := *u
	shown.User = nil
	return shown.String()
}

// Caller is the verified caller on whose behalf a custodian is asked. The
// keystore puts it in the context of every Wrap and Unwrap, so that drivers
// whose custodian authenticates the caller itself (Vault's JWT login with
// the caller's attestation) can present the caller's evidence.
type Caller struct {
	Region   string // attested region, e.g. "europe-west1"
	Workload string // attested workload identity
	Issuer   string // attestation issuer
	Token    string // the raw attestation evidence (a JWT), or ""
}

type callerKey struct{}

// WithCaller returns a context that carries c to custodians.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller that ctx carries, if any.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// KeyManager is implemented by custodians that manage the versions of their
// KEK. Rotation, key epochs and the custodian CLI use it; encryption and
// decryption never do.
type KeyManager interface {
	// Rotate makes a new KEK version the primary one, used by Wrap from
	// now on, and returns its number.
	Rotate(ctx context.Context) (uint32, error)
	// Rewrap re-encrypts w (wrapped for b under any live KEK version)
	// under the primary version. Custodians that can do so server-side
	// (Vault's rewrap) never expose the zone key to the caller.
	Rewrap(ctx context.Context, w Wrapped, b Binding) (Wrapped, error)
	// KEKVersions returns the oldest version that can still unwrap and
	// the primary version.
	KEKVersions(ctx context.Context) (minLive, primary uint32, err error)
	// RetireBelow makes versions older than v refuse to unwrap (Vault's
	// min_decryption_version); where the custodian allows, it can be
	// lowered again. v must not exceed the primary version.
	RetireBelow(ctx context.Context, v uint32) error
	// DestroyBelow irrevocably destroys the versions older than v (Vault:
	// trim; Cloud KMS: destroy; local: erase from the file). Nothing
	// wrapped under them can be unwrapped again by anyone.
	DestroyBelow(ctx context.Context, v uint32) error
}

// Destroyer is implemented by custodians that can destroy their KEK as a
// whole, for the shred of an entire zone. Encryption and decryption never
// use it.
type Destroyer interface {
	// Destroy irrevocably destroys every version of the KEK: nothing
	// wrapped under it can be unwrapped again by anyone, and the
	// custodian wraps nothing new under it. Afterwards Wrap, Unwrap and
	// the KeyManager methods fail with an error wrapping ErrUnknownKey.
	// Destroying a destroyed KEK succeeds and changes nothing.
	Destroy(ctx context.Context) error
}
