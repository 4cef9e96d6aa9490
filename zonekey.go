package zonekey

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/zonekey/zonekey/fieldcrypt"
	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
	_ "github.com/zonekey/zonekey/kms/localkms" // the local:// custodian
)

// The errors of zonekey. Every error a Client returns that has one of these
// causes wraps it; test with errors.Is. The packages beneath re-export the
// same values.
var (
	// ErrOutsideCustody: the caller's attested location is not allowed to
	// use the zone's keys. Retrying from the same place cannot succeed.
	ErrOutsideCustody = errs.OutsideCustody
	// ErrAttestation: the caller's attestation evidence was rejected
	// (expired, forged, wrong audience or issuer).
	ErrAttestation = errs.Attestation
	// ErrTampered: a ciphertext or stored key failed authentication. It was
	// altered, or moved to another field, record, subject or zone. Never
	// retry; treat as an integrity incident.
	ErrTampered = errs.Tampered
	// ErrUnknownKey: a ciphertext names a DEK (or a row names a zone key)
	// that the keystore does not hold.
	ErrUnknownKey = errs.UnknownKey
	// ErrKeyShredded: the subject's key was deliberately destroyed; its
	// data is gone for good.
	ErrKeyShredded = errs.KeyShredded
	// ErrKMSUnavailable: the zone's custodian could not be reached. Nothing
	// was changed; retrying later may succeed.
	ErrKMSUnavailable = errs.KMSUnavailable
	// ErrUnsupportedField: a struct type has a tagged field zonekey cannot
	// handle; the *fieldcrypt.PlanError names it. Fix the type.
	ErrUnsupportedField = errs.UnsupportedField
	// ErrFormat: a value with the envelope prefix is not a well-formed
	// envelope.
	ErrFormat = errs.Format
	// ErrUnknownZone: a zone that is not configured, or an invalid name.
	ErrUnknownZone = errs.UnknownZone
	// ErrInvalidValue: the argument is not a non-nil pointer to a struct,
	// the record lacks its zone or subject, or its value cannot be bound
	// (cyclic, or aliased between fields); from Open, the Config is
	// incomplete. Fix the call; retrying cannot help.
	ErrInvalidValue = errs.InvalidValue
	// ErrNotEncrypted: Decrypt met a plaintext value in a tagged field (see
	// AllowPlaintext).
	ErrNotEncrypted = errs.NotEncrypted
	// ErrClosed: the Client or its keystore is closed.
	ErrClosed = errs.Closed
	// ErrStore: the keystore's storage failed (I/O, database).
	ErrStore = errs.Store
	// ErrKMSConfig: a custodian URL or its configuration is invalid.
	ErrKMSConfig = errs.KMSConfig
	// ErrDenied: the custodian refused the caller's credentials.
	ErrDenied = errs.Denied
)

// Config configures a Client.
type Config struct {
	// Dir is where the embedded keystore lives (Dir/keystore.db). It is
	// created with mode 0700 if missing. Required unless Store is set.
	Dir string
	// Store replaces the embedded keystore (for example a PostgreSQL
	// store). The Client does not close it.
	Store keystore.Store
	// Zones lists the custody zones and their custodians. Required.
	Zones map[string]ZoneConfig
	// ZoneKeyTTL, DEKTTL and DEKCacheSize tune the keyring's caches; zero
	// values take the keystore package's defaults.
	ZoneKeyTTL   time.Duration
	DEKTTL       time.Duration
	DEKCacheSize int
}

// ZoneConfig configures one custody zone.
type ZoneConfig struct {
	// KEK is the URL of the zone's key-encryption key at its custodian:
	// "local:///path/eu.kek" (development; "?create=1" makes the file),
	// or a URL of a driver registered with package kms.
	KEK string
}

// LocalZones returns a Zones map for development: each zone's KEK in a
// file dir/<zone>.kek, created on first use.
func LocalZones(dir string, zones ...string) map[string]ZoneConfig {
	out := make(map[string]ZoneConfig, len(zones))
	for _, z := range zones {
		u := url.URL{Scheme: "local", Path: filepath.Join(dir, z+".kek"), RawQuery: "create=1"}
		out[z] = ZoneConfig{KEK: u.String()}
	}
	return out
}

// Client encrypts and decrypts records. It is safe for concurrent use.
type Client struct {
	crypter    *fieldcrypt.Crypter
	keyring    *keystore.Keyring
	store      keystore.Store
	ownStore   bool
	custodians []kms.Custodian
	closed     atomic.Bool
}

// Open opens a Client: the keystore, and a custodian per zone. The
// configuration is checked before anything is opened or created; errors wrap
// ErrUnknownZone (no zones, or an invalid zone name), ErrInvalidValue (no
// Dir and no Store), ErrKMSConfig (a KEK URL that names no registered
// driver, or a missing or unusable KEK file) or ErrStore.
func Open(ctx context.Context, cfg Config) (_ *Client, err error) {
	if len(cfg.Zones) == 0 {
		return nil, fmt.Errorf("%w: Config.Zones is empty", ErrUnknownZone)
	}
	zones := slices.Sorted(maps.Keys(cfg.Zones))
	for _, zone := range zones {
		if err := keystore.ValidateZone(zone); err != nil {
			return nil, err
		}
	}
	if cfg.Store == nil && cfg.Dir == "" {
		return nil, fmt.Errorf("%w: Config.Dir is empty (or set Config.Store)", ErrInvalidValue)
	}
	// On error, release what was opened. (c is not the named result,
	// which a failing return sets to nil.)
	c := &Client{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	custodians := make(map[string]kms.Custodian, len(cfg.Zones))
	for _, zone := range zones {
		cust, err := kms.Open(ctx, cfg.Zones[zone].KEK)
		if err != nil {
			return nil, fmt.Errorf("zone %q: %w", zone, err)
		}
		c.custodians = append(c.custodians, cust)
		custodians[zone] = cust
	}
	c.store = cfg.Store
	if c.store == nil {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrStore, err)
		}
		s, err := boltstore.Open(filepath.Join(cfg.Dir, "keystore.db"), nil)
		if err != nil {
			return nil, err
		}
		c.store, c.ownStore = s, true
	}
	c.keyring, err = keystore.New(keystore.Config{
		Store:        c.store,
		Custodians:   custodians,
		ZoneKeyTTL:   cfg.ZoneKeyTTL,
		DEKTTL:       cfg.DEKTTL,
		DEKCacheSize: cfg.DEKCacheSize,
	})
	if err != nil {
		return nil, err
	}
	c.crypter = fieldcrypt.New(c.keyring)
	return c, nil
}

// CallOption adjusts one Encrypt or Decrypt call.
type CallOption = fieldcrypt.CallOption

// WithZone sets the zone of a record whose type has no zone tag.
func WithZone(zone string) CallOption { return fieldcrypt.Zone(zone) }

// WithSubject sets the subject of a record whose type has no subject tag.
func WithSubject(subject string) CallOption { return fieldcrypt.Subject(subject) }

// AllowPlaintext lets Decrypt leave unencrypted values as they are, for
// rows written before encryption was introduced.
func AllowPlaintext() CallOption { return fieldcrypt.AllowPlaintext() }

// Encrypt seals the tagged fields of the struct v points to, in place, under
// the DEK of the record's subject in the record's zone. On error v is
// unchanged. After Close it fails with ErrClosed.
func (c *Client) Encrypt(ctx context.Context, v any, opts ...CallOption) error {
	if c.keyring == nil || c.closed.Load() {
		return fmt.Errorf("zonekey: encrypt: %w", ErrClosed)
	}
	return c.crypter.Encrypt(ctx, v, opts...)
}

// Decrypt opens the tagged fields of the struct v points to, in place. On
// error v is unchanged. After Close it fails with ErrClosed.
func (c *Client) Decrypt(ctx context.Context, v any, opts ...CallOption) error {
	if c.keyring == nil || c.closed.Load() {
		return fmt.Errorf("zonekey: decrypt: %w", ErrClosed)
	}
	return c.crypter.Decrypt(ctx, v, opts...)
}

// Keyring returns the client's keyring, for key operations.
func (c *Client) Keyring() *keystore.Keyring { return c.keyring }

// Close closes the keyring, the custodians and the embedded store. Calls
// after the first return nil.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	var errList []error
	if c.keyring != nil {
		errList = append(errList, c.keyring.Close())
	}
	for _, cust := range c.custodians {
		errList = append(errList, cust.Close())
	}
	c.custodians = nil
	if c.ownStore && c.store != nil {
		errList = append(errList, c.store.Close())
		c.store = nil
	}
	return errors.Join(errList...)
}
