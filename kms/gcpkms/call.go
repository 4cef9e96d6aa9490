package gcpkms

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"regexp"
	"time"

	"github.com/googleapis/gax-go/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/zonekey/zonekey/kms"
)

// RetryPolicy bounds the retries of transient failures: the gRPC codes
// UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED, and data corrupted
// in transit (a CRC32C mismatch either way). No other failure is retried.
// Attempts are spaced by exponential backoff with jitter, and the context
// bounds them all: no attempt starts once its deadline has passed or would
// pass during the wait.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts, the first included; 0 means
	// 5, and 1 disables retries.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry; 0 means 100ms.
	// Each further wait doubles, up to MaxBackoff; each is drawn at random
	// between half of that and all of it.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait between attempts; 0 means 5s.
	MaxBackoff time.Duration
}

// Defaults of RetryPolicy.
const (
	DefaultMaxAttempts    = 5
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
)

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultInitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	return p
}

// backoff returns the wait after the given failed attempt (1-based).
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.InitialBackoff
	for i := 1; i < attempt && d < p.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxBackoff)
	half := d / 2
	return half + rand.N(d-half+1)
}

// ErrChecksum reports that data was corrupted between this process and
// Cloud KMS, in either direction: a CRC32C checksum did not match, or Cloud
// KMS did not confirm that it had verified the checksums sent with a
// request. Such failures are retried (see RetryPolicy); when every attempt
// failed, the error wraps both ErrChecksum and kms.ErrUnavailable, since a
// later attempt may succeed, and no data from a corrupted response is ever
// returned. A persistent mismatch points at faulty hardware or a proxy that
// alters traffic.
var ErrChecksum = errors.New("gcpkms: CRC32C integrity check failed")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// crcValue is the protobuf form of a CRC32C checksum.
func crcValue(b []byte) *wrapperspb.Int64Value { return wrapperspb.Int64(int64(crc32c(b))) }

// crcMatches reports whether the checksum v is present and is b's.
func crcMatches(v *wrapperspb.Int64Value, b []byte) bool {
	return v != nil && v.GetValue() == int64(crc32c(b))
}

// checksumError is a failed integrity check of a response.
type checksumError struct{ msg string }

func (e *checksumError) Error() string { return e.msg }

func corrupted(format string, args ...any) error {
	return &checksumError{msg: fmt.Sprintf(format, args...)}
}

// requestChecksumRE matches the INVALID_ARGUMENT message with which Cloud KMS
// refuses a request whose payload does not match the checksum sent with it.
var requestChecksumRE = regexp.MustCompile(`The checksum in field \S+ did not match the data in field \S+`)

// noRetry turns off the client library's own retries: the custodian retries
// itself, on its own policy, and must count and bound the attempts.
var noRetry = gax.WithRetry(func() gax.Retryer { return nil })

// op names a custodian operation in errors, and tells how an
// INVALID_ARGUMENT from Cloud KMS is to be read.
type op string

const (
	opOpen    op = "open"
	opWrap    op = "wrap"
	opUnwrap  op = "unwrap"
	opRotate  op = "rotate"
	opList    op = "list versions"
	opRetire  op = "retire versions"
	opDestroy op = "destroy versions"
	// opDestroyKEK is Destroy, of every version.
	opDestroyKEK op = "destroy the key"
)

// outcome is what a failed attempt means.
type outcome struct {
	sentinel error // the kms sentinel the failure maps to
	checksum bool  // a CRC32C mismatch
	retry    bool  // worth another attempt
}

// classify maps an error of one attempt to its meaning.
func classify(o op, err error) outcome {
	var ce *checksumError
	if errors.As(err, &ce) {
		return outcome{sentinel: kms.ErrUnavailable, checksum: true, retry: true}
	}
	s, ok := status.FromError(err)
	if !ok {
		// Not from gRPC: a response that breaks the API's contract (an
		// empty ciphertext, another key's version). Not retried.
		return outcome{sentinel: kms.ErrUnavailable}
	}
	switch s.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return outcome{sentinel: kms.ErrUnavailable, retry: true}
	case codes.InvalidArgument:
		if requestChecksumRE.MatchString(s.Message()) {
			// The request reached Cloud KMS altered.
			return outcome{sentinel: kms.ErrUnavailable, checksum: true, retry: true}
		}
		if o == opUnwrap {
			// "Decryption failed: the ciphertext is invalid", or the
			// additional authenticated data does not match.
			return outcome{sentinel: kms.ErrTampered}
		}
		return outcome{sentinel: kms.ErrConfig}
	case codes.NotFound, codes.FailedPrecondition:
		// No such key or version, or a version that is disabled, scheduled
		// for destruction or destroyed.
		return outcome{sentinel: kms.ErrUnknownKey}
	case codes.PermissionDenied, codes.Unauthenticated:
		return outcome{sentinel: kms.ErrDenied}
	case codes.Unimplemented:
		return outcome{sentinel: kms.ErrConfig}
	}
	// Internal, Unknown, Aborted, Canceled, and codes the API does not
	// use for these calls (DataLoss, AlreadyExists, OutOfRange): the
	// service failed. Not retried.
	return outcome{sentinel: kms.ErrUnavailable}
}

// retry runs attempt until it succeeds, fails for good, runs out of
// attempts or ctx ends. Its error wraps the kms sentinel of the last
// failure (and ErrChecksum for a corruption), or ctx's error.
func (c *Custodian) retry(ctx context.Context, o op, attempt func(context.Context) error) error {
	var last error
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			return c.ctxError(o, err, last)
		}
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return c.ctxError(o, ctxErr, err)
		}
		last = err
		out := classify(o, err)
		if !out.retry {
			return c.failure(o, out, err, n, "")
		}
		if n >= c.retryPolicy.MaxAttempts {
			return c.failure(o, out, err, n, "")
		}
		wait := c.retryPolicy.backoff(n)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return c.failure(o, out, err, n, "; not retried, since the context's deadline comes before the next attempt")
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return c.ctxError(o, ctx.Err(), last)
		case <-t.C:
		}
	}
}

func (c *Custodian) failure(o op, out outcome, err error, attempts int, note string) error {
	tries := ""
	if attempts > 1 {
		tries = fmt.Sprintf(" (%d attempts)", attempts)
	}
	if !out.checksum && errors.Is(err, out.sentinel) {
		return fmt.Errorf("gcpkms: %s with %s: %w%s%s", o, c.key.full, err, tries, note)
	}
	detail := fmt.Sprintf("gcpkms: %s with %s: %v%s%s", o, c.key.full, err, tries, note)
	switch {
	case out.checksum:
		return fmt.Errorf("%w: %w: %s", out.sentinel, ErrChecksum, detail)
	}
	return fmt.Errorf("%w: %s", out.sentinel, detail)
}

func (c *Custodian) ctxError(o op, ctxErr, last error) error {
	if last == nil {
		return fmt.Errorf("gcpkms: %s with %s: %w", o, c.key.full, ctxErr)
	}
	return fmt.Errorf("gcpkms: %s with %s: %w (last failure: %v)", o, c.key.full, ctxErr, last)
}
