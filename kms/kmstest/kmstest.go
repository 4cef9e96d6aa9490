// Package kmstest is the conformance suite every key custodian driver must
// pass.
//
// A driver's tests implement [Harness] and call [RunConformanceTests]:
//
//	func TestConformance(t *testing.T) {
//		kmstest.RunConformanceTests(t, newHarness)
//	}
//
// The suite checks the contract of [kms.Custodian] that callers rely on:
// round trips, randomized wrapping, key separation, enforcement of the
// binding, rejection of every altered or malformed ciphertext with
// [kms.ErrTampered], context cancellation, concurrent use and Close.
// A harness that also implements [Rotator] gets the KEK rotation tests.
// Custodians that implement [kms.Destroyer] get the destruction tests, and
// the key management tests of those tests when they also implement
// [kms.KeyManager]; a harness that implements [Reopener] lets them check
// that the destruction holds for a custodian opened afterwards, as by
// another process.
//
// The contract is strict where callers branch on it: an altered, truncated
// or foreign-binding ciphertext must fail with kms.ErrTampered (a key of
// another KEK, or a KEK version the custodian does not have, may instead
// give kms.ErrUnknownKey). A driver whose ciphertext is text, such as Vault
// Transit's "vault:v1:<base64>", must parse it strictly, since a flipped bit
// that still decodes to the same bytes fails the bit-flip test. Close must
// be idempotent, and a closed custodian must return an error that is not
// kms.ErrTampered.
//
// The suite makes one harness per call of RunConformanceTests and asks it for
// fresh custodians in every subtest, so a harness may share an expensive
// resource (a server process) across subtests. Subtests run one after
// another.
package kmstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/kms"
)

// Harness makes custodians for the suite.
type Harness interface {
	// MakeCustodians returns two new custodians backed by two different
	// KEKs. The suite closes both when the subtest that asked for them ends.
	MakeCustodians(ctx context.Context) (kms.Custodian, kms.Custodian, error)
	// Close releases what the harness holds. The suite calls it once, after
	// every subtest has finished.
	Close()
}

// HarnessMaker makes the Harness for one run of the suite.
type HarnessMaker func(ctx context.Context, t *testing.T) (Harness, error)

// Rotator is implemented by a Harness whose driver can rotate a KEK. Rotation
// is an operation of the driver (or of its administrator), not of
// kms.Custodian, so the suite reaches it through the harness.
type Rotator interface {
	// Rotate makes a new version of the KEK behind c, one of the custodians
	// returned by MakeCustodians, and makes it the version c wraps under
	// from now on. It returns the new version's number.
	Rotate(ctx context.Context, c kms.Custodian) (newVersion uint32, err error)
}

// Reopener is implemented by a Harness that can open a second custodian of
// the KEK behind a custodian it made, as another process configured with
// the same KEK would, sharing nothing in memory with the first.
type Reopener interface {
	// Reopen returns a new custodian of the KEK behind c, one of the
	// custodians returned by MakeCustodians. The suite closes it.
	Reopen(ctx context.Context, c kms.Custodian) (kms.Custodian, error)
}

// Limits of the contract.
const (
	// MaxKeySize is the largest key every custodian must accept in Wrap.
	// Zone keys are 32 bytes; drivers must accept any length from 1 to
	// MaxKeySize bytes and may refuse longer ones.
	MaxKeySize = 64
	// bitFlipFull is the ciphertext length up to which the suite flips
	// every bit; longer ciphertexts get a sample of positions.
	bitFlipFull = 128
)

// RunConformanceTests runs the suite against the driver that newHarness
// provides. Each test is a subtest of t.
func RunConformanceTests(t *testing.T, newHarness HarnessMaker) {
	t.Helper()
	h, err := newHarness(t.Context(), t)
	require.NoError(t, err, "making the harness")
	t.Cleanup(h.Close)

	tests := []struct {
		name string
		run  func(t *testing.T, h Harness)
	}{
		{"RoundTrip", testRoundTrip},
		{"KeyLengths", testKeyLengths},
		{"EmptyKey", testEmptyKey},
		{"InvalidBinding", testInvalidBinding},
		{"RandomizedWrap", testRandomizedWrap},
		{"InputsNotAliased", testInputsNotAliased},
		{"OtherKEKCannotUnwrap", testOtherKEK},
		{"BindingEnforced", testBindingEnforced},
		{"BitFlips", testBitFlips},
		{"MalformedCiphertext", testMalformed},
		{"WrongKEKVersion", testWrongKEKVersion},
		{"ContextDone", testContextDone},
		{"Concurrent", testConcurrent},
		{"Close", testClose},
		{"Rotation", testRotation},
		{"Destroy", testDestroy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, h) })
	}
}

// custodians asks h for a fresh pair and closes it when t ends.
func custodians(t *testing.T, h Harness) (kms.Custodian, kms.Custodian) {
	t.Helper()
	c1, c2, err := h.MakeCustodians(t.Context())
	require.NoError(t, err, "MakeCustodians")
	require.NotNil(t, c1)
	require.NotNil(t, c2)
	t.Cleanup(func() {
		_ = c1.Close()
		_ = c2.Close()
	})
	return c1, c2
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// binding returns a binding with a random key id, so that custodians shared
// through a server never see the same binding twice.
func binding(t testing.TB) kms.Binding {
	return kms.Binding{Zone: "eu", KeyID: fmt.Sprintf("zk-%x", randomBytes(t, 8)), Version: 1}
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// wrap wraps a fresh 32-byte key under c and checks the result's shape.
func wrap(t *testing.T, c kms.Custodian, b kms.Binding) ([]byte, kms.Wrapped) {
	t.Helper()
	key := randomBytes(t, 32)
	w, err := c.Wrap(t.Context(), key, b)
	require.NoError(t, err, "Wrap")
	require.NotEmpty(t, w.Ciphertext, "Wrap returned an empty ciphertext")
	require.GreaterOrEqual(t, w.KEKVersion, uint32(1), "KEK versions start at 1")
	return key, w
}

// requireTampered checks that err reports ErrTampered.
func requireTampered(t *testing.T, err error, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	require.Error(t, err, msg)
	require.ErrorIs(t, err, kms.ErrTampered, msg)
}

// requireTamperedOrUnknown checks that err reports ErrTampered or
// ErrUnknownKey, the two answers a custodian may give for a ciphertext that
// is not its own.
func requireTamperedOrUnknown(t *testing.T, err error, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	require.Error(t, err, msg)
	if !errors.Is(err, kms.ErrTampered) && !errors.Is(err, kms.ErrUnknownKey) {
		require.Failf(t, "error is neither ErrTampered nor ErrUnknownKey", "%s: got %v", msg, err)
	}
}

func testRoundTrip(t *testing.T, h Harness) {
	c1, c2 := custodians(t, h)
	for i, c := range []kms.Custodian{c1, c2} {
		b := binding(t)
		key, w := wrap(t, c, b)
		require.False(t, bytes.Contains(w.Ciphertext, key), "custodian %d: ciphertext contains the key", i+1)
		got, err := c.Unwrap(t.Context(), w, b)
		require.NoError(t, err, "custodian %d: Unwrap", i+1)
		require.Equal(t, key, got, "custodian %d: round trip", i+1)
		// Unwrapping is repeatable.
		got, err = c.Unwrap(t.Context(), w, b)
		require.NoError(t, err, "custodian %d: second Unwrap", i+1)
		require.Equal(t, key, got, "custodian %d: second round trip", i+1)
	}
}

func testKeyLengths(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	for _, n := range []int{1, 16, 24, 31, 32, 33, 48, MaxKeySize} {
		t.Run(fmt.Sprintf("%d", n), func(t *testing.T) {
			b := binding(t)
			key := randomBytes(t, n)
			w, err := c.Wrap(t.Context(), key, b)
			require.NoError(t, err, "Wrap of a %d-byte key", n)
			got, err := c.Unwrap(t.Context(), w, b)
			require.NoError(t, err)
			require.Equal(t, key, got)
		})
	}
}

func testEmptyKey(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	for _, tc := range []struct {
		name string
		key  []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				w   kms.Wrapped
				err error
			)
			require.NotPanics(t, func() { w, err = c.Wrap(t.Context(), tc.key, binding(t)) })
			require.Error(t, err, "Wrap of an empty key must fail")
			require.Empty(t, w.Ciphertext)
		})
	}
}

// testInvalidBinding: a binding that Binding.Validate refuses (a part
// missing, or a string too long to encode) is refused by Wrap with ErrConfig,
// as its doc says drivers do, and nothing is wrapped.
func testInvalidBinding(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	long := string(make([]byte, kms.MaxBindingString+1))
	for _, tc := range []struct {
		name string
		b    kms.Binding
	}{
		{"no zone", kms.Binding{KeyID: "k", Version: 1}},
		{"no key id", kms.Binding{Zone: "eu", Version: 1}},
		{"version 0", kms.Binding{Zone: "eu", KeyID: "k"}},
		{"zone too long", kms.Binding{Zone: long, KeyID: "k", Version: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := c.Wrap(t.Context(), randomBytes(t, 32), tc.b)
			require.ErrorIs(t, err, kms.ErrConfig)
			require.Empty(t, w.Ciphertext)
		})
	}
}

func testRandomizedWrap(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := binding(t)
	key := randomBytes(t, 32)
	w1, err := c.Wrap(t.Context(), key, b)
	require.NoError(t, err)
	w2, err := c.Wrap(t.Context(), key, b)
	require.NoError(t, err)
	require.NotEqual(t, w1.Ciphertext, w2.Ciphertext, "two wraps of the same key and binding must differ")
	for _, w := range []kms.Wrapped{w1, w2} {
		got, err := c.Unwrap(t.Context(), w, b)
		require.NoError(t, err)
		require.Equal(t, key, got)
	}
}

// testInputsNotAliased checks that a custodian neither keeps nor modifies
// the slices it is given, and hands out a fresh key on every Unwrap.
func testInputsNotAliased(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := binding(t)
	key := randomBytes(t, 32)
	want := clone(key)
	w, err := c.Wrap(t.Context(), key, b)
	require.NoError(t, err)
	require.Equal(t, want, key, "Wrap modified its input")
	for i := range key {
		key[i] ^= 0xff
	}

	ct := clone(w.Ciphertext)
	got, err := c.Unwrap(t.Context(), w, b)
	require.NoError(t, err)
	require.Equal(t, want, got, "Wrap kept a reference to its input")
	require.Equal(t, ct, w.Ciphertext, "Unwrap modified the ciphertext")
	for i := range got {
		got[i] = 0
	}
	again, err := c.Unwrap(t.Context(), w, b)
	require.NoError(t, err)
	require.Equal(t, want, again, "Unwrap returned memory it still uses")
}

func testOtherKEK(t *testing.T, h Harness) {
	c1, c2 := custodians(t, h)
	b := binding(t)
	_, w1 := wrap(t, c1, b)
	_, w2 := wrap(t, c2, b)
	got, err := c2.Unwrap(t.Context(), w1, b)
	requireTamperedOrUnknown(t, err, "custodian 2 unwrapped custodian 1's key")
	require.Nil(t, got)
	got, err = c1.Unwrap(t.Context(), w2, b)
	requireTamperedOrUnknown(t, err, "custodian 1 unwrapped custodian 2's key")
	require.Nil(t, got)
}

func testBindingEnforced(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := kms.Binding{Zone: "eu", KeyID: fmt.Sprintf("zk-%x", randomBytes(t, 8)), Version: 7}
	_, w := wrap(t, c, b)
	for _, tc := range []struct {
		name  string
		other kms.Binding
	}{
		{"zone", kms.Binding{Zone: "us", KeyID: b.KeyID, Version: b.Version}},
		{"zone case", kms.Binding{Zone: "EU", KeyID: b.KeyID, Version: b.Version}},
		{"key id", kms.Binding{Zone: b.Zone, KeyID: b.KeyID + "x", Version: b.Version}},
		{"version", kms.Binding{Zone: b.Zone, KeyID: b.KeyID, Version: b.Version + 1}},
		{"version zero", kms.Binding{Zone: b.Zone, KeyID: b.KeyID}},
		// The same concatenated bytes split differently between the fields.
		{"field boundary", kms.Binding{Zone: b.Zone + b.KeyID[:1], KeyID: b.KeyID[1:], Version: b.Version}},
		{"empty", kms.Binding{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Unwrap(t.Context(), w, tc.other)
			requireTampered(t, err, "unwrap under %v of a key wrapped under %v", tc.other, b)
			require.Nil(t, got)
		})
	}
}

// flipPositions returns the byte offsets whose bits the suite flips: all of
// them for short ciphertexts, otherwise both ends and a stride through the
// middle.
func flipPositions(n int) []int {
	var pos []int
	for i := 0; i < n; i++ {
		if n <= bitFlipFull || i < bitFlipFull/2 || i >= n-bitFlipFull/2 || i%13 == 0 {
			pos = append(pos, i)
		}
	}
	return pos
}

func testBitFlips(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := binding(t)
	_, w := wrap(t, c, b)
	for _, i := range flipPositions(len(w.Ciphertext)) {
		for bit := range 8 {
			ct := clone(w.Ciphertext)
			ct[i] ^= 1 << bit
			var (
				got []byte
				err error
			)
			require.NotPanics(t, func() {
				got, err = c.Unwrap(t.Context(), kms.Wrapped{Ciphertext: ct, KEKVersion: w.KEKVersion}, b)
			}, "byte %d bit %d", i, bit)
			requireTampered(t, err, "ciphertext with byte %d bit %d flipped", i, bit)
			require.Nil(t, got)
		}
	}
}

func testMalformed(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := binding(t)
	_, w := wrap(t, c, b)
	n := len(w.Ciphertext)
	for _, tc := range []struct {
		name string
		ct   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"one byte", w.Ciphertext[:1]},
		{"first half", clone(w.Ciphertext[:n/2])},
		{"last half", clone(w.Ciphertext[n/2:])},
		{"truncated by one", clone(w.Ciphertext[:n-1])},
		{"extended by one", append(clone(w.Ciphertext), 0)},
		{"doubled", append(clone(w.Ciphertext), w.Ciphertext...)},
		{"zeros", make([]byte, n)},
		{"garbage", randomBytes(t, n)},
		{"long garbage", randomBytes(t, 4096)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				got []byte
				err error
			)
			require.NotPanics(t, func() {
				got, err = c.Unwrap(t.Context(), kms.Wrapped{Ciphertext: tc.ct, KEKVersion: w.KEKVersion}, b)
			})
			requireTampered(t, err, "malformed ciphertext %q", tc.name)
			require.Nil(t, got)
		})
	}
}

func testWrongKEKVersion(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := binding(t)
	_, w := wrap(t, c, b)
	for _, v := range []uint32{w.KEKVersion + 1, 999, 1<<32 - 1} {
		t.Run(fmt.Sprintf("%d", v), func(t *testing.T) {
			got, err := c.Unwrap(t.Context(), kms.Wrapped{Ciphertext: w.Ciphertext, KEKVersion: v}, b)
			requireTamperedOrUnknown(t, err, "unwrap claiming KEK version %d of a key wrapped under %d", v, w.KEKVersion)
			require.Nil(t, got)
		})
	}
}

func testContextDone(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := binding(t)
	key, w := wrap(t, c, b)

	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()

	for _, tc := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"canceled", canceled, context.Canceled},
		{"deadline exceeded", expired, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w2, err := c.Wrap(tc.ctx, key, b)
			require.ErrorIs(t, err, tc.want, "Wrap")
			require.Empty(t, w2.Ciphertext)
			got, err := c.Unwrap(tc.ctx, w, b)
			require.ErrorIs(t, err, tc.want, "Unwrap")
			require.Nil(t, got)
		})
	}
}

func testConcurrent(t *testing.T, h Harness) {
	c1, c2 := custodians(t, h)
	const workers, rounds = 8, 20
	ctx := t.Context()
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- func() error {
				c, other := c1, c2
				if g%2 == 1 {
					c, other = c2, c1
				}
				for r := range rounds {
					b := kms.Binding{Zone: "eu", KeyID: fmt.Sprintf("zk-%d-%d", g, r), Version: uint32(r + 1)}
					key := make([]byte, 32)
					if _, err := rand.Read(key); err != nil {
						return err
					}
					w, err := c.Wrap(ctx, key, b)
					if err != nil {
						return fmt.Errorf("worker %d round %d: Wrap: %w", g, r, err)
					}
					got, err := c.Unwrap(ctx, w, b)
					if err != nil {
						return fmt.Errorf("worker %d round %d: Unwrap: %w", g, r, err)
					}
					if !bytes.Equal(got, key) {
						return fmt.Errorf("worker %d round %d: unwrapped key differs", g, r)
					}
					if _, err := other.Unwrap(ctx, w, b); !errors.Is(err, kms.ErrTampered) && !errors.Is(err, kms.ErrUnknownKey) {
						return fmt.Errorf("worker %d round %d: other custodian's Unwrap: got %v, want ErrTampered or ErrUnknownKey", g, r, err)
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}
}

func testClose(t *testing.T, h Harness) {
	c, _ := custodians(t, h)
	b := binding(t)
	key, w := wrap(t, c, b)
	require.NoError(t, c.Close(), "Close")
	var err error
	require.NotPanics(t, func() { err = c.Close() })
	require.NoError(t, err, "second Close")

	require.NotPanics(t, func() { _, err = c.Wrap(t.Context(), key, b) })
	require.Error(t, err, "Wrap after Close")
	require.NotErrorIs(t, err, kms.ErrTampered, "a closed custodian must not report tampering")

	var got []byte
	require.NotPanics(t, func() { got, err = c.Unwrap(t.Context(), w, b) })
	require.Error(t, err, "Unwrap after Close")
	require.NotErrorIs(t, err, kms.ErrTampered, "a closed custodian must not report tampering")
	require.Nil(t, got)
}

func testRotation(t *testing.T, h Harness) {
	r, ok := h.(Rotator)
	if !ok {
		t.Skip("harness does not implement kmstest.Rotator")
	}
	c, other := custodians(t, h)
	ctx := t.Context()
	b := binding(t)

	key1, w1 := wrap(t, c, b)
	_, wOther := wrap(t, other, b)

	v2, err := r.Rotate(ctx, c)
	require.NoError(t, err, "Rotate")
	require.Greater(t, v2, w1.KEKVersion, "Rotate must return a newer version")

	key2, w2 := wrap(t, c, b)
	require.Equal(t, v2, w2.KEKVersion, "a wrap after rotation must use the new version")

	v3, err := r.Rotate(ctx, c)
	require.NoError(t, err, "second Rotate")
	require.Greater(t, v3, v2)
	key3, w3 := wrap(t, c, b)
	require.Equal(t, v3, w3.KEKVersion)

	// Every older wrap still unwraps, each under its own version only.
	for _, tc := range []struct {
		key []byte
		w   kms.Wrapped
	}{{key1, w1}, {key2, w2}, {key3, w3}} {
		got, err := c.Unwrap(ctx, tc.w, b)
		require.NoError(t, err, "Unwrap of a key wrapped under KEK version %d", tc.w.KEKVersion)
		require.Equal(t, tc.key, got)

		relabelled := tc.w
		relabelled.KEKVersion = v3
		if tc.w.KEKVersion == v3 {
			relabelled.KEKVersion = v2
		}
		_, err = c.Unwrap(ctx, relabelled, b)
		requireTamperedOrUnknown(t, err, "wrap under version %d unwrapped as version %d", tc.w.KEKVersion, relabelled.KEKVersion)
	}

	// Rotation of one KEK leaves the other alone.
	_, err = other.Unwrap(ctx, wOther, b)
	require.NoError(t, err, "the other custodian after rotation")
	_, err = other.Unwrap(ctx, w3, b)
	requireTamperedOrUnknown(t, err, "the other custodian unwrapped a key of the rotated KEK")
}

// requireUnknownKey checks that err reports ErrUnknownKey.
func requireUnknownKey(t *testing.T, err error, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	require.Error(t, err, msg)
	require.ErrorIs(t, err, kms.ErrUnknownKey, msg)
}

// requireDestroyed checks that c behaves as a custodian of a destroyed KEK:
// nothing wrapped before unwraps, nothing new is wrapped, and every key
// management method fails, all with ErrUnknownKey.
func requireDestroyed(t *testing.T, c kms.Custodian, b kms.Binding, ws []kms.Wrapped) {
	t.Helper()
	ctx := t.Context()
	for i, w := range ws {
		var (
			got []byte
			err error
		)
		require.NotPanics(t, func() { got, err = c.Unwrap(ctx, w, b) })
		requireUnknownKey(t, err, "Unwrap of a key wrapped under KEK version %d before the destruction", w.KEKVersion)
		require.Nil(t, got, "no key from a destroyed KEK (wrapped %d)", i+1)
	}
	w, err := c.Wrap(ctx, randomBytes(t, 32), b)
	requireUnknownKey(t, err, "Wrap after the destruction")
	require.Empty(t, w.Ciphertext, "Wrap after the destruction returned a ciphertext")

	km, ok := c.(kms.KeyManager)
	if !ok {
		return
	}
	v, err := km.Rotate(ctx)
	requireUnknownKey(t, err, "Rotate after the destruction")
	require.Zero(t, v)
	rw, err := km.Rewrap(ctx, ws[0], b)
	requireUnknownKey(t, err, "Rewrap after the destruction")
	require.Empty(t, rw.Ciphertext)
	_, _, err = km.KEKVersions(ctx)
	requireUnknownKey(t, err, "KEKVersions after the destruction")
	requireUnknownKey(t, km.RetireBelow(ctx, 1), "RetireBelow after the destruction")
	requireUnknownKey(t, km.DestroyBelow(ctx, 1), "DestroyBelow after the destruction")
}

func testDestroy(t *testing.T, h Harness) {
	c, other := custodians(t, h)
	d, ok := c.(kms.Destroyer)
	if !ok {
		t.Skipf("%T does not implement kms.Destroyer", c)
	}
	ctx := t.Context()
	b := binding(t)

	// Keys wrapped under every version of the KEK, where it has several.
	key1, w1 := wrap(t, c, b)
	keys, ws := [][]byte{key1}, []kms.Wrapped{w1}
	if r, ok := h.(Rotator); ok {
		_, err := r.Rotate(ctx, c)
		require.NoError(t, err, "Rotate")
		key2, w2 := wrap(t, c, b)
		require.NotEqual(t, w1.KEKVersion, w2.KEKVersion)
		keys, ws = append(keys, key2), append(ws, w2)
	}
	keyOther, wOther := wrap(t, other, b)

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, d.Destroy(canceled), context.Canceled, "Destroy with a canceled context")
	for i, w := range ws {
		got, err := c.Unwrap(ctx, w, b)
		require.NoError(t, err, "a canceled Destroy must leave the KEK alone")
		require.Equal(t, keys[i], got)
	}

	require.NoError(t, d.Destroy(ctx), "Destroy")
	requireDestroyed(t, c, b, ws)
	// Malformed ciphertexts are still refused as such.
	_, err := c.Unwrap(ctx, kms.Wrapped{Ciphertext: []byte("x"), KEKVersion: 1}, b)
	requireTamperedOrUnknown(t, err, "Unwrap of garbage after the destruction")

	require.NoError(t, d.Destroy(ctx), "Destroy of a destroyed KEK must succeed")
	requireDestroyed(t, c, b, ws)

	if r, ok := h.(Reopener); ok {
		again, err := r.Reopen(ctx, c)
		if err == nil {
			t.Cleanup(func() { _ = again.Close() })
			requireDestroyed(t, again, b, ws)
			if d2, ok := again.(kms.Destroyer); ok {
				require.NoError(t, d2.Destroy(ctx), "Destroy of a destroyed KEK by another custodian")
			}
			requireDestroyed(t, again, b, ws)
		} else {
			// Refusing to open a destroyed KEK is allowed, as long as
			// the refusal says why.
			requireUnknownKey(t, err, "Reopen of a destroyed KEK")
		}
		requireDestroyed(t, c, b, ws)
	}

	// The other KEK is untouched.
	got, err := other.Unwrap(ctx, wOther, b)
	require.NoError(t, err, "destroying one KEK must leave another alone")
	require.Equal(t, keyOther, got)
	_, w := wrap(t, other, b)
	_, err = other.Unwrap(ctx, w, b)
	require.NoError(t, err)

	require.NoError(t, c.Close())
	require.Error(t, d.Destroy(ctx), "Destroy after Close")
}
