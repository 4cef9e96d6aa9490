// Package gcpkms is a key custodian whose KEK is a Google Cloud KMS key,
// located in the custody zone it serves.
//
// Open it with [Open], naming the key and the Cloud KMS locations the zone
// allows:
//
//	c, err := gcpkms.Open(ctx, gcpkms.Config{
//		KeyName:          "projects/acme/locations/europe-west1/keyRings/zonekey/cryptoKeys/eu",
//		AllowedLocations: []string{"europe-west1", "europe-west4", "europe"},
//	})
//
// or by URL through kms.Open (importing this package registers the "gcpkms"
// scheme):
//
//	gcpkms://projects/acme/locations/europe-west1/keyRings/zonekey/cryptoKeys/eu
//	gcpkms://projects/acme/locations/europe/keyRings/zonekey/cryptoKeys/eu?allowed_locations=europe-west1,europe
//
// Credentials are Application Default Credentials unless client options or
// a client are given in [Config]. docs/gcpkms.md describes the key ring,
// the IAM roles and the gcloud commands a zone needs.
//
// # Residency
//
// Open refuses, before any network call, a key whose location (the L of
// projects/P/locations/L/...) is not one of Config.AllowedLocations, with an
// error wrapping kms.ErrConfig. A URL without allowed_locations allows only
// the location it names. Open then reads the key and refuses one whose
// purpose is not ENCRYPT_DECRYPT.
//
// # Wrapping
//
// Wrap calls Encrypt on the key, so Cloud KMS uses the key's primary
// version, and Unwrap calls Decrypt on the key, so Cloud KMS finds the
// version from the ciphertext. Wrapped.Ciphertext is Cloud KMS's ciphertext,
// unchanged. The additional authenticated data binds the zone key's identity
// and the KEK version:
//
//	kms.Binding.Bytes() || KEK version (4 bytes, big-endian)
//
// so a wrapped key opens only under its own binding, and only when the KEK
// version stored beside it is the version that encrypted it (a relabelled
// row fails with kms.ErrTampered). Cloud KMS reports the version it used for
// Encrypt only after encrypting; Wrap therefore encrypts for the version it
// expects to be primary and, if Cloud KMS used another one (the key was
// rotated elsewhere since), encrypts again for that one.
//
// Every request carries CRC32C checksums of its payloads and every response
// is checked against the checksums Cloud KMS returns, as Google's data
// integrity guidelines ask. A mismatch in either direction is retried a
// limited number of times ([RetryPolicy]) and then fails with [ErrChecksum];
// data from a response that did not verify is never returned.
//
// # Errors
//
// Errors wrap the kms sentinels: INVALID_ARGUMENT from Decrypt (the
// ciphertext or its binding does not authenticate) is kms.ErrTampered;
// NOT_FOUND and FAILED_PRECONDITION (no such key, or a version that is
// disabled, scheduled for destruction or destroyed) are kms.ErrUnknownKey;
// PERMISSION_DENIED and UNAUTHENTICATED are kms.ErrDenied; UNAVAILABLE,
// DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retried with exponential
// backoff and jitter and then reported as kms.ErrUnavailable. The context
// bounds everything, retries included; when it ends, the error wraps its
// error.
//
// # Key management
//
// A Custodian implements kms.KeyManager: Rotate creates a key version and
// makes it primary; RetireBelow disables older versions (and re-enables
// them when lowered again); DestroyBelow disables and destroys them. Cloud
// KMS destroys a version only after the key's destroy_scheduled_duration
// (30 days unless set at key creation, at least 1 day): until then the
// version refuses to decrypt but can be restored, so a key epoch is final
// only when that delay has passed. Destroy disables and destroys every
// version, for the shred of the whole zone, with the same delay; Rotate
// then refuses to add a version to the destroyed key.
//
// Rewrap has no server-side counterpart in Cloud KMS: it decrypts and
// encrypts again, so the zone key passes through this process's memory,
// as it does on every Unwrap. The process that rewraps must therefore run
// in the zone, like any process that unwraps its keys.
package gcpkms

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"sync/atomic"

	kmsapi "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

// Scheme is the URL scheme under which this package registers its opener
// with package kms.
const Scheme = "gcpkms"

// MaxKeySize is the longest key Wrap accepts, in bytes. Zone keys are 32.
const MaxKeySize = 64

// Limits of Cloud KMS for SOFTWARE and HSM keys.
const (
	// maxAAD bounds the additional authenticated data: 64 KiB for SOFTWARE
	// keys, 8 KiB together with the plaintext for HSM keys. A binding
	// with zone and key id of ordinary length is far below either.
	maxAAD = 8<<10 - MaxKeySize
	// maxCiphertext bounds what Unwrap sends. A wrapped key of at most
	// MaxKeySize bytes is a small fraction of it.
	maxCiphertext = 64 << 10
	// maxPrimaryChanges bounds how often Wrap follows a primary version
	// that changed under it.
	maxPrimaryChanges = 3
)

func init() {
	kms.Register(Scheme, openURL)
}

// Config configures Open.
type Config struct {
	// KeyName is the resource name of the KEK, a CryptoKey of purpose
	// ENCRYPT_DECRYPT: projects/P/locations/L/keyRings/R/cryptoKeys/K.
	KeyName string
	// AllowedLocations are the Cloud KMS locations where the zone's KEK
	// may live, such as "europe-west1" or the multi-region "europe". Open
	// refuses a key in any other location. Required.
	AllowedLocations []string
	// ClientOptions configure the client that Open creates (credentials,
	// endpoint). Without them, Application Default Credentials are used.
	ClientOptions []option.ClientOption
	// Client, if set, is used instead of creating a client; ClientOptions
	// must then be empty. The caller owns it: Close does not close it.
	Client *kmsapi.KeyManagementClient
	// Retry bounds the retries of transient failures; the zero value
	// means the defaults documented in RetryPolicy.
	Retry RetryPolicy
}

// Custodian wraps zone keys under one Cloud KMS key. It implements
// kms.Custodian, kms.KeyManager and kms.Destroyer and is safe for
// concurrent use.
type Custodian struct {
	key         keyName
	client      *kmsapi.KeyManagementClient
	ownsClient  bool
	retryPolicy RetryPolicy

	// primary is the version Wrap expects Cloud KMS to use: the primary
	// version as last seen (at Open, after Rotate, or in an Encrypt
	// response).
	primary atomic.Uint32
	closed  atomic.Bool
}

var (
	_ kms.Custodian  = (*Custodian)(nil)
	_ kms.KeyManager = (*Custodian)(nil)
	_ kms.Destroyer  = (*Custodian)(nil)
)

// Open checks cfg, connects to Cloud KMS and reads the key. Errors wrap
// kms.ErrConfig for a malformed key name, a key outside
// cfg.AllowedLocations (refused before any network call), a key whose
// purpose is not ENCRYPT_DECRYPT, or a client that cannot be created;
// kms.ErrUnknownKey when the key does not exist; kms.ErrDenied when the
// credentials may not read it; kms.ErrUnavailable when Cloud KMS cannot be
// reached.
func Open(ctx context.Context, cfg Config) (*Custodian, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	key, err := parseKeyName(cfg.KeyName)
	if err != nil {
		return nil, err
	}
	if err := checkResidency(key, cfg.AllowedLocations); err != nil {
		return nil, err
	}
	c := &Custodian{key: key, client: cfg.Client, retryPolicy: cfg.Retry.withDefaults()}
	if c.client != nil {
		if len(cfg.ClientOptions) > 0 {
			return nil, fmt.Errorf("%w: gcpkms: both Client and ClientOptions are set; configure the client where it is created", kms.ErrConfig)
		}
	} else {
		c.client, err = kmsapi.NewKeyManagementClient(ctx, cfg.ClientOptions...)
		if err != nil {
			return nil, fmt.Errorf("%w: gcpkms: creating the Cloud KMS client: %v", kms.ErrConfig, err)
		}
		c.ownsClient = true
	}
	if err := c.checkKey(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// checkKey reads the key, checks its purpose and notes its primary version.
func (c *Custodian) checkKey(ctx context.Context) error {
	ck, err := c.getKey(ctx, opOpen)
	if err != nil {
		return err
	}
	if p := ck.GetPurpose(); p != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return fmt.Errorf("%w: gcpkms: key %s has purpose %s; a KEK needs purpose ENCRYPT_DECRYPT (symmetric encryption)",
			kms.ErrConfig, c.key.full, p)
	}
	if primary := ck.GetPrimary(); primary != nil {
		v, err := c.key.versionOf(primary.GetName())
		if err != nil {
			return err
		}
		c.primary.Store(v)
	}
	return nil
}

// getKey reads the CryptoKey.
func (c *Custodian) getKey(ctx context.Context, o op) (*kmspb.CryptoKey, error) {
	var ck *kmspb.CryptoKey
	err := c.retry(ctx, o, func(ctx context.Context) error {
		var err error
		ck, err = c.client.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: c.key.full}, noRetry)
		return err
	})
	return ck, err
}

// openURL is the kms.Opener of the "gcpkms" scheme.
func openURL(ctx context.Context, u *url.URL) (kms.Custodian, error) {
	cfg, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	cfg.ClientOptions = urlClientOptions
	c, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// urlClientOptions are the client options of custodians opened by URL
// (tests point them at an in-process server).
var urlClientOptions []option.ClientOption

// KeyName returns the resource name of the KEK.
func (c *Custodian) KeyName() string { return c.key.full }

// Location returns the Cloud KMS location of the KEK.
func (c *Custodian) Location() string { return c.key.location }

// aad returns the additional authenticated data for b under KEK version v.
func aad(b kms.Binding, v uint32) []byte {
	return append(b.Bytes(), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// Wrap encrypts key, 1 to MaxKeySize bytes, under the key's primary
// version, bound to b and to that version. Errors wrap errs.InvalidValue
// for a key of another length and kms.ErrConfig for an invalid binding.
func (c *Custodian) Wrap(ctx context.Context, key []byte, b kms.Binding) (kms.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return kms.Wrapped{}, err
	}
	if c.closed.Load() {
		return kms.Wrapped{}, c.closedError(opWrap)
	}
	if len(key) == 0 || len(key) > MaxKeySize {
		return kms.Wrapped{}, fmt.Errorf("%w: gcpkms: wrap %v: key is %d bytes, want 1 to %d", errs.InvalidValue, b, len(key), MaxKeySize)
	}
	if err := b.Validate(); err != nil {
		return kms.Wrapped{}, fmt.Errorf("gcpkms: wrap: %w", err)
	}
	if n := len(aad(b, 0)); n > maxAAD {
		return kms.Wrapped{}, fmt.Errorf("%w: gcpkms: wrap %v: binding takes %d bytes of additional authenticated data, more than the %d allowed",
			kms.ErrConfig, b, n, maxAAD)
	}
	v := c.primary.Load()
	for range maxPrimaryChanges {
		ct, used, err := c.encrypt(ctx, key, aad(b, v))
		if err != nil {
			return kms.Wrapped{}, err
		}
		if used == v {
			return kms.Wrapped{Ciphertext: ct, KEKVersion: v}, nil
		}
		// The primary version is not the one expected, so the ciphertext is
		// bound to the wrong version number. Follow Cloud KMS and encrypt
		// again for the version it uses now.
		c.primary.CompareAndSwap(v, used)
		v = used
	}
	return kms.Wrapped{}, fmt.Errorf("%w: gcpkms: wrap %v with %s: the primary version changed %d times during the call",
		kms.ErrUnavailable, b, c.key.full, maxPrimaryChanges)
}

// encrypt calls Encrypt on the key and verifies the response. It returns the
// ciphertext and the number of the version that produced it.
func (c *Custodian) encrypt(ctx context.Context, plaintext, aad []byte) (ciphertext []byte, version uint32, err error) {
	req := &kmspb.EncryptRequest{
		Name:                              c.key.full,
		Plaintext:                         plaintext,
		AdditionalAuthenticatedData:       aad,
		PlaintextCrc32C:                   crcValue(plaintext),
		AdditionalAuthenticatedDataCrc32C: crcValue(aad),
	}
	err = c.retry(ctx, opWrap, func(ctx context.Context) error {
		resp, err := c.client.Encrypt(ctx, req, noRetry)
		if err != nil {
			return err
		}
		switch {
		case !resp.GetVerifiedPlaintextCrc32C():
			return corrupted("Cloud KMS did not verify the plaintext checksum (request damaged in transit)")
		case !resp.GetVerifiedAdditionalAuthenticatedDataCrc32C():
			return corrupted("Cloud KMS did not verify the additional authenticated data checksum (request damaged in transit)")
		case !crcMatches(resp.GetCiphertextCrc32C(), resp.GetCiphertext()):
			return corrupted("ciphertext does not match its checksum (response damaged in transit)")
		case len(resp.GetCiphertext()) == 0:
			return fmt.Errorf("%w: gcpkms: Cloud KMS returned an empty ciphertext", kms.ErrUnavailable)
		}
		v, err := c.key.versionOf(resp.GetName())
		if err != nil {
			return err
		}
		ciphertext, version = bytes.Clone(resp.GetCiphertext()), v
		return nil
	})
	return ciphertext, version, err
}

// Unwrap decrypts w, which must have been wrapped for binding b under KEK
// version w.KEKVersion. A ciphertext that is malformed or altered, or that
// was wrapped for another binding or another version, fails with
// kms.ErrTampered; one whose version is disabled, scheduled for destruction
// or destroyed fails with kms.ErrUnknownKey.
func (c *Custodian) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.closed.Load() {
		return nil, c.closedError(opUnwrap)
	}
	tampered := func(why string) error {
		return fmt.Errorf("%w: gcpkms: unwrap %v with %s: %s", kms.ErrTampered, b, c.key.full, why)
	}
	switch {
	case len(w.Ciphertext) == 0:
		return nil, tampered("empty ciphertext")
	case len(w.Ciphertext) > maxCiphertext:
		return nil, tampered(fmt.Sprintf("ciphertext is %d bytes, too long", len(w.Ciphertext)))
	case w.KEKVersion == 0:
		return nil, tampered("no KEK version (versions start at 1)")
	}
	if err := b.Validate(); err != nil {
		// Nothing can have been wrapped under such a binding.
		return nil, tampered(err.Error())
	}
	ad := aad(b, w.KEKVersion)
	if len(ad) > maxAAD {
		return nil, tampered("binding too long to have been wrapped")
	}
	return c.decrypt(ctx, w.Ciphertext, ad)
}

// decrypt calls Decrypt on the key and verifies the response.
func (c *Custodian) decrypt(ctx context.Context, ciphertext, aad []byte) ([]byte, error) {
	req := &kmspb.DecryptRequest{
		Name:                              c.key.full,
		Ciphertext:                        ciphertext,
		AdditionalAuthenticatedData:       aad,
		CiphertextCrc32C:                  crcValue(ciphertext),
		AdditionalAuthenticatedDataCrc32C: crcValue(aad),
	}
	var plaintext []byte
	err := c.retry(ctx, opUnwrap, func(ctx context.Context) error {
		resp, err := c.client.Decrypt(ctx, req, noRetry)
		if err != nil {
			return err
		}
		pt := resp.GetPlaintext()
		if !crcMatches(resp.GetPlaintextCrc32C(), pt) {
			clear(pt)
			return corrupted("plaintext does not match its checksum (response damaged in transit)")
		}
		plaintext = pt
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(plaintext) == 0 || len(plaintext) > MaxKeySize {
		clear(plaintext)
		return nil, fmt.Errorf("%w: gcpkms: unwrap with %s: unwrapped %d bytes, not a key of 1 to %d bytes",
			kms.ErrTampered, c.key.full, len(plaintext), MaxKeySize)
	}
	return plaintext, nil
}

// Close releases the client if Open created it; a client given in
// Config.Client is left open. Later calls return an error wrapping
// errs.Closed; Close itself may be called again and returns nil.
func (c *Custodian) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.ownsClient {
		if err := c.client.Close(); err != nil {
			return fmt.Errorf("gcpkms: closing the client of %s: %v", c.key.full, err)
		}
	}
	return nil
}

func (c *Custodian) closedError(o op) error {
	return fmt.Errorf("gcpkms: %s: custodian for %s is closed: %w", o, c.key.full, errs.Closed)
}
