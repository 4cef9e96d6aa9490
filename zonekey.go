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
	"strings"
	"sync/atomic"
	"time"

	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/fieldcrypt"
	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/postgres"
	"github.com/zonekey/zonekey/kms"
	_ "github.com/zonekey/zonekey/kms/gcpkms"   // the gcpkms:// custodian
	_ "github.com/zonekey/zonekey/kms/localkms" // the local:// custodian
	_ "github.com/zonekey/zonekey/kms/vault"    // the vault:// custodian
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
	// ErrSubjectMoved: the subject's keys were moved to another custody
	// zone; its data is read, and new data encrypted, under that zone.
	ErrSubjectMoved = errs.SubjectMoved
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
	// (cyclic, or aliased between fields). Fix the call; retrying cannot
	// help.
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
	// ErrDenied: the custodian refused the caller's credentials, for
	// example because its attested region does not match the custodian's
	// own policy for the zone.
	ErrDenied = errs.Denied
	// ErrAudit: an audit event could not be recorded, so the key operation
	// it was about was refused (zonekey fails closed).
	ErrAudit = errs.Audit
	// ErrInvalidConfig: the configuration is malformed or inconsistent.
	ErrInvalidConfig = errs.Config
)

// AnyRegion in a zone's Regions opens the zone to callers from every
// region, attested or not. Use it for development zones only.
const AnyRegion = keystore.AnyRegion

// Config configures a Client.
type Config struct {
	// Dir is where the embedded keystore lives (Dir/keystore.db). It is
	// created with mode 0700 if missing. Required unless Store is set.
	Dir string
	// Store replaces the embedded keystore (for example a PostgreSQL
	// store). The Client does not close it.
	Store keystore.Store
	// StoreURL opens a shared keystore instead of the embedded one:
	// "postgres://user@host/db?zonekey_schema=zonekey" (see package
	// keystore/postgres). The Client closes it.
	StoreURL string
	// Zones lists the custody zones and their custodians. Required.
	Zones map[string]ZoneConfig
	// Attestor proves where this process runs: every key access of a zone
	// restricted to some regions needs it (see package attest; an
	// *attest.Attestor binds an evidence source to a verifier).
	Attestor keystore.Attestor
	// Audit receives an event for every key unwrap, key creation and
	// denial. AuditFile adds a hash-chained JSON-lines file (verify it with
	// `zonekey audit verify`), AuditSlog the default slog logger. If
	// recording fails, the key operation is refused.
	Audit     audit.Sink
	AuditFile string
	AuditSlog bool
	// ZoneKeyTTL, DEKTTL and DEKCacheSize tune the keyring's caches; zero
	// values take the keystore package's defaults. DEKTTL bounds how long
	// a running process keeps using a DEK after another process shredded
	// it.
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
	// Regions lists the attested regions (such as "europe-west1") whose
	// callers may encrypt and decrypt under the zone. Required: a zone
	// open to everyone must say so with AnyRegion.
	Regions []string
	// Issuers optionally lists the attestation issuers whose evidence
	// counts for the zone (keystore.RegionPolicy.Issuers); empty accepts
	// every issuer the Attestor trusts.
	Issuers []string
}

// LocalZones returns a Zones map for development: each zone's KEK in a
// file dir/<zone>.kek, created on first use, open to AnyRegion.
func LocalZones(dir string, zones ...string) map[string]ZoneConfig {
	out := make(map[string]ZoneConfig, len(zones))
	for _, z := range zones {
		out[z] = ZoneConfig{KEK: LocalKEK(filepath.Join(dir, z+".kek")), Regions: []string{AnyRegion}}
	}
	return out
}

// LocalKEK returns the URL of a local KEK file at path, created on first
// use: for development and tests only.
func LocalKEK(path string) string {
	u := url.URL{Scheme: "local", Path: path, RawQuery: "create=1"}
	return u.String()
}

// Client encrypts and decrypts records. It is safe for concurrent use.
type Client struct {
	crypter    *fieldcrypt.Crypter
	keyring    *keystore.Keyring
	store      keystore.Store
	ownStore   bool
	custodians []kms.Custodian
	closed     atomic.Bool
	auditFile  *audit.FileSink
}

// Open opens a Client: the keystore, and a custodian per zone. The
// configuration is checked, as far as it can be without opening anything
// (zones, regions, the store's settings, each KEK URL's scheme, the audit
// file's directory), before anything is opened or created; errors wrap
// ErrUnknownZone (no zones, or an invalid zone name), ErrInvalidConfig (no
// Dir, Store or StoreURL, or more than one; a zone without Regions; negative
// TTLs or cache size), ErrAudit (the AuditFile's directory does not exist),
// ErrKMSConfig (a KEK URL that names no registered driver, or a missing or
// unusable KEK file) or ErrStore.
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
	if cfg.Store != nil && cfg.StoreURL != "" {
		return nil, fmt.Errorf("%w: set Config.Store or Config.StoreURL, not both", ErrInvalidConfig)
	}
	if cfg.StoreURL != "" && !strings.HasPrefix(cfg.StoreURL, "postgres://") && !strings.HasPrefix(cfg.StoreURL, "postgresql://") {
		return nil, fmt.Errorf("%w: Config.StoreURL must be a postgres:// URL", ErrInvalidConfig)
	}
	if cfg.Store == nil && cfg.StoreURL == "" && cfg.Dir == "" {
		return nil, fmt.Errorf("%w: Config.Dir is empty (or set Config.Store or Config.StoreURL)", ErrInvalidConfig)
	}
	if cfg.Dir != "" && (cfg.Store != nil || cfg.StoreURL != "") {
		return nil, fmt.Errorf("%w: Config.Dir names the embedded store: set it, or Config.Store or Config.StoreURL, not both", ErrInvalidConfig)
	}
	if cfg.ZoneKeyTTL < 0 || cfg.DEKTTL < 0 || cfg.DEKCacheSize < 0 {
		return nil, fmt.Errorf("%w: Config.ZoneKeyTTL, DEKTTL and DEKCacheSize must not be negative (zero takes the default)", ErrInvalidConfig)
	}
	// Checked before anything is created: a zone's KEK (a local one with
	// create=1) must not be made for an Open that then fails.
	for _, zone := range zones {
		if err := kms.CheckURL(cfg.Zones[zone].KEK); err != nil {
			return nil, fmt.Errorf("zone %q: %w", zone, err)
		}
	}
	if cfg.AuditFile != "" {
		if fi, err := os.Stat(filepath.Dir(cfg.AuditFile)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%w: the directory of Config.AuditFile %s does not exist", ErrAudit, cfg.AuditFile)
		}
	}
	policy := &keystore.RegionPolicy{Regions: map[string][]string{}, Issuers: map[string][]string{}, Attestor: cfg.Attestor}
	for _, zone := range zones {
		regions := cfg.Zones[zone].Regions
		if len(regions) == 0 {
			return nil, fmt.Errorf("%w: zone %q lists no regions (list the attested regions that may use it, or AnyRegion for a development zone)", ErrInvalidConfig, zone)
		}
		policy.Regions[zone] = slices.Clone(regions)
		if issuers := cfg.Zones[zone].Issuers; len(issuers) > 0 {
			policy.Issuers[zone] = slices.Clone(issuers)
		}
	}
	if err := policy.Check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
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
	if cfg.StoreURL != "" {
		s, err := postgres.Open(ctx, cfg.StoreURL)
		if err != nil {
			return nil, err
		}
		c.store, c.ownStore = s, true
	}
	if c.store == nil {
		s, err := openShared(cfg.Dir)
		if err != nil {
			return nil, err
		}
		c.store, c.ownStore = s, true
	}
	var sinks []audit.Sink
	if cfg.Audit != nil {
		sinks = append(sinks, cfg.Audit)
	}
	if cfg.AuditSlog {
		sinks = append(sinks, audit.NewSlogSink(nil))
	}
	if cfg.AuditFile != "" {
		f, err := audit.OpenFile(cfg.AuditFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrAudit, err)
		}
		c.auditFile = f
		sinks = append(sinks, f)
	}
	var sink audit.Sink
	if len(sinks) > 0 {
		sink = audit.Multi(sinks...)
	}
	c.keyring, err = keystore.New(keystore.Config{
		Store:        c.store,
		Custodians:   custodians,
		Policy:       policy,
		Audit:        sink,
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

// IndexTerms returns the terms that the blind-index field index (its field
// path, such as "EmailIdx") of the struct type of record takes for value in
// zone: one per live version of the index key, newest first. record is a
// value of the type, a pointer to one (nil is fine) or its reflect.Type.
//
//	type User struct {
//		ID       string `zonekey:"subject"`
//		Region   string `zonekey:"zone"`
//		Email    string `zonekey:"encrypt"`
//		EmailIdx string `zonekey:"index=Email,bits=16,lower,trim"`
//	}
//	terms, err := c.IndexTerms(ctx, "eu", User{}, "EmailIdx", "Alice@Example.com")
//	rows := db.Query(ctx, "SELECT ... FROM users WHERE region = 'eu' AND email_idx = ANY($1)", terms)
//	// decrypt each candidate and keep those whose Email matches: a term
//	// is shared by other values too, by design (see SECURITY.md).
//
// Computing a term needs the zone's index key: a caller outside the zone is
// refused with ErrOutsideCustody, as for Decrypt.
func (c *Client) IndexTerms(ctx context.Context, zone string, record any, index, value string) ([]string, error) {
	if c.keyring == nil || c.closed.Load() {
		return nil, fmt.Errorf("zonekey: index terms: %w", ErrClosed)
	}
	return c.crypter.IndexTerms(ctx, zone, record, index, value)
}

// AppendIndexTerms is IndexTerms appending the terms to dst and returning
// the extended slice, for a query loop that reuses one slice: then only
// the terms themselves are allocated. On error dst is returned unchanged.
func (c *Client) AppendIndexTerms(ctx context.Context, dst []string, zone string, record any, index, value string) ([]string, error) {
	if c.keyring == nil || c.closed.Load() {
		return dst, fmt.Errorf("zonekey: index terms: %w", ErrClosed)
	}
	return c.crypter.AppendIndexTerms(ctx, dst, zone, record, index, value)
}

// DeterministicTerms returns the envelopes that the deterministic field
// field (`zonekey:"encrypt,deterministic"`) of the struct type of record
// holds for value in zone, one per live key version, newest first: compare
// the column with each. Custody applies as for IndexTerms.
func (c *Client) DeterministicTerms(ctx context.Context, zone string, record any, field, value string) ([]string, error) {
	if c.keyring == nil || c.closed.Load() {
		return nil, fmt.Errorf("zonekey: deterministic terms: %w", ErrClosed)
	}
	return c.crypter.DeterministicTerms(ctx, zone, record, field, value)
}

// Reindex brings the blind-index and deterministic fields of the stored
// record v points to up to the current key versions, and reports whether it
// changed v (then store it again). Run it over every record of a zone after
// RotateSearchKey, then RetireSearchKeys; see fieldcrypt.Crypter.Reindex for
// the loop. On error v is unchanged.
func (c *Client) Reindex(ctx context.Context, v any, opts ...CallOption) (changed bool, err error) {
	if c.keyring == nil || c.closed.Load() {
		return false, fmt.Errorf("zonekey: reindex: %w", ErrClosed)
	}
	return c.crypter.Reindex(ctx, v, opts...)
}

// RotateSearchKey makes a new version of the key behind the blind-index or
// deterministic field field of the struct type of record, in zone, and
// returns its number. New records use it (other processes within DEKTTL);
// IndexTerms and DeterministicTerms return terms of every live version, so
// lookups keep finding records written under older ones until Reindex has
// run over them and RetireSearchKeys retired the older versions.
func (c *Client) RotateSearchKey(ctx context.Context, zone string, record any, field string) (uint32, error) {
	if c.keyring == nil || c.closed.Load() {
		return 0, fmt.Errorf("zonekey: rotate search key: %w", ErrClosed)
	}
	purpose, name, err := fieldcrypt.SearchKey(record, field)
	if err != nil {
		return 0, err
	}
	k, err := c.keyring.RotateAuxKey(ctx, zone, purpose, name)
	if err != nil {
		return 0, err
	}
	return k.Version, nil
}

// RetireSearchKeys retires the versions up to through of the key behind
// field in zone (see RotateSearchKey): lookups stop searching them. Call it
// once a Reindex pass over every record of the zone, started at least
// DEKTTL after the rotation, changed nothing. The current version cannot be
// retired.
func (c *Client) RetireSearchKeys(ctx context.Context, zone string, record any, field string, through uint32) error {
	if c.keyring == nil || c.closed.Load() {
		return fmt.Errorf("zonekey: retire search keys: %w", ErrClosed)
	}
	purpose, name, err := fieldcrypt.SearchKey(record, field)
	if err != nil {
		return err
	}
	return c.keyring.RetireAuxKeys(ctx, zone, purpose, name, through)
}

// BlankSearchable empties the blind-index and deterministic fields of the
// struct v points to and leaves every other field as it is. Call it, and
// store the record, when erasing a subject: shredding the subject's key does
// not reach them, since they are under per-zone keys (SECURITY.md,
// "Searchable fields").
func BlankSearchable(v any) error { return fieldcrypt.BlankSearchable(v) }

// Keyring returns the client's keyring, for key operations.
func (c *Client) Keyring() *keystore.Keyring { return c.keyring }

// Shred erases a data subject of zone: its keys are deleted, so every copy
// of its encrypted data becomes unreadable (ErrKeyShredded) at once in this
// process and within DEKTTL in others, and in keystore backups after the
// zone's next key epoch (SECURITY.md, "Erasure and moves"). Shredding a
// shredded subject changes nothing. Blank the subject's searchable fields
// too (BlankSearchable): the shred does not reach them. See
// keystore.Keyring.ShredSubject.
func (c *Client) Shred(ctx context.Context, zone, subject string) (keystore.ShredResult, error) {
	if c.keyring == nil {
		return keystore.ShredResult{}, fmt.Errorf("zonekey: shred: %w", ErrClosed)
	}
	return c.keyring.ShredSubject(ctx, zone, subject)
}

// Reinstate lets a shredded subject of zone have data again, under a new
// key: what was encrypted before the shred stays unreadable. Until it is
// called, encrypting for a shredded subject fails with ErrKeyShredded. See
// keystore.Keyring.Reinstate.
func (c *Client) Reinstate(ctx context.Context, zone, subject string) error {
	if c.keyring == nil {
		return fmt.Errorf("zonekey: reinstate: %w", ErrClosed)
	}
	_, err := c.keyring.Reinstate(ctx, zone, subject)
	return err
}

// MoveSubject puts a subject's keys under another custody zone without
// touching its data: afterwards its records decrypt for callers in to and
// are refused to callers only in from. This process must be in from; to's
// custodian needs to let it wrap only. Existing ciphertexts decrypt as they
// are; encrypt the subject's new data under to (the record's zone field, or
// WithZone): under from it fails with ErrSubjectMoved. See
// keystore.Keyring.MoveSubject.
func (c *Client) MoveSubject(ctx context.Context, subject, from, to string) (keystore.MoveResult, error) {
	if c.keyring == nil {
		return keystore.MoveResult{}, fmt.Errorf("zonekey: move subject: %w", ErrClosed)
	}
	return c.keyring.MoveSubject(ctx, subject, from, to)
}

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
	if c.auditFile != nil {
		errList = append(errList, c.auditFile.Close())
	}
	return errors.Join(errList...)
}
