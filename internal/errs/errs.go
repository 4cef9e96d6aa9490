// Package errs holds the sentinel errors shared by every zonekey package.
//
// Each public package re-exports the sentinels that its functions can return
// under its own name (as os re-exports io/fs errors), so that callers test
// with errors.Is against whichever package they imported; the values are the
// same. The contract of each sentinel is documented where it is re-exported
// in package zonekey.
package errs

//lint:file-ignore ST1012 errs.X reads as an error already; the packages re-export each as ErrX.

import "errors"

// The sentinels. Their messages are short on purpose: the error that wraps
// one says which field, zone, subject or key it concerns.
var (
	OutsideCustody   = errors.New("zonekey: caller is outside the zone's custody")
	Attestation      = errors.New("zonekey: attestation evidence rejected")
	Tampered         = errors.New("zonekey: ciphertext or key material failed authentication")
	UnknownKey       = errors.New("zonekey: unknown key")
	KeyShredded      = errors.New("zonekey: key has been shredded")
	SubjectMoved     = errors.New("zonekey: subject moved to another zone")
	KMSUnavailable   = errors.New("zonekey: key custodian unavailable")
	UnsupportedField = errors.New("zonekey: unsupported field")
	Format           = errors.New("zonekey: malformed envelope")
	UnknownZone      = errors.New("zonekey: unknown zone")
	InvalidValue     = errors.New("zonekey: invalid value")
	NotEncrypted     = errors.New("zonekey: value is not encrypted")
	Closed           = errors.New("zonekey: closed")
	Exists           = errors.New("zonekey: key already exists")
	Conflict         = errors.New("zonekey: key row changed concurrently")
	KMSConfig        = errors.New("zonekey: invalid custodian configuration")
	Denied           = errors.New("zonekey: custodian denied the request")
	Store            = errors.New("zonekey: keystore storage failure")
	Audit            = errors.New("zonekey: audit record could not be written")
	Config           = errors.New("zonekey: invalid configuration")
)
