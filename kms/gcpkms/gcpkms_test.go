package gcpkms_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kmsapi "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/gcpkms"
	"github.com/zonekey/zonekey/kms/gcpkms/internal/kmsserver"
	"github.com/zonekey/zonekey/kms/kmstest"
)

// euLocations are the locations of the "eu" zone in these tests.
var euLocations = []string{"europe-west1", "europe-west4", "europe"}

// fastRetry keeps the tests quick; the attempts are those of the default.
var fastRetry = gcpkms.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}

var keySeq atomic.Uint64

// newKeyName returns a fresh key name in location.
func newKeyName(location string) string {
	return fmt.Sprintf("projects/zonekey-test/locations/%s/keyRings/zonekey/cryptoKeys/k%d", location, keySeq.Add(1))
}

// startServer starts an in-process Cloud KMS for the test.
func startServer(t testing.TB) *kmsserver.Server {
	t.Helper()
	s, err := kmsserver.Start()
	require.NoError(t, err)
	t.Cleanup(s.Stop)
	return s
}

// newKey creates an ENCRYPT_DECRYPT key in europe-west1 on s.
func newKey(t testing.TB, s *kmsserver.Server) string {
	t.Helper()
	name := newKeyName("europe-west1")
	require.NoError(t, s.CreateKey(name, kmspb.CryptoKey_ENCRYPT_DECRYPT))
	return name
}

// open opens a custodian of key on s with its own client.
func open(t testing.TB, s *kmsserver.Server, key string) *gcpkms.Custodian {
	t.Helper()
	c, err := gcpkms.Open(t.Context(), gcpkms.Config{
		KeyName:          key,
		AllowedLocations: euLocations,
		ClientOptions:    s.ClientOptions(),
		Retry:            fastRetry,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newCustodian starts a server with one key and opens a custodian of it.
func newCustodian(t testing.TB) (*kmsserver.Server, *gcpkms.Custodian) {
	t.Helper()
	s := startServer(t)
	return s, open(t, s, newKey(t, s))
}

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return k
}

var bind = kms.Binding{Zone: "eu", KeyID: "zk-1", Version: 1}

// harness makes custodians over fresh keys of one server, with their own
// clients, with a client the harness owns, or by URL.
type harness struct {
	s      *kmsserver.Server
	mode   string // "options", "client" or "url"
	client *kmsapi.KeyManagementClient
}

func (h *harness) open(ctx context.Context) (kms.Custodian, error) {
	key := newKeyName("europe-west1")
	if err := h.s.CreateKey(key, kmspb.CryptoKey_ENCRYPT_DECRYPT); err != nil {
		return nil, err
	}
	switch h.mode {
	case "url":
		return kms.Open(ctx, "gcpkms://"+key+"?allowed_locations=europe-west1,europe")
	case "client":
		return gcpkms.Open(ctx, gcpkms.Config{KeyName: key, AllowedLocations: euLocations, Client: h.client, Retry: fastRetry})
	}
	return gcpkms.Open(ctx, gcpkms.Config{KeyName: key, AllowedLocations: euLocations, ClientOptions: h.s.ClientOptions(), Retry: fastRetry})
}

func (h *harness) MakeCustodians(ctx context.Context) (kms.Custodian, kms.Custodian, error) {
	c1, err := h.open(ctx)
	if err != nil {
		return nil, nil, err
	}
	c2, err := h.open(ctx)
	if err != nil {
		c1.Close()
		return nil, nil, err
	}
	return c1, c2, nil
}

func (h *harness) Rotate(ctx context.Context, c kms.Custodian) (uint32, error) {
	gc, ok := c.(*gcpkms.Custodian)
	if !ok {
		return 0, fmt.Errorf("not a gcpkms custodian: %T", c)
	}
	return gc.Rotate(ctx)
}

// Reopen opens the key of c again, the same way, as another process would.
func (h *harness) Reopen(ctx context.Context, c kms.Custodian) (kms.Custodian, error) {
	gc, ok := c.(*gcpkms.Custodian)
	if !ok {
		return nil, fmt.Errorf("not a gcpkms custodian: %T", c)
	}
	key := gc.KeyName()
	switch h.mode {
	case "url":
		return kms.Open(ctx, "gcpkms://"+key+"?allowed_locations=europe-west1,europe")
	case "client":
		return gcpkms.Open(ctx, gcpkms.Config{KeyName: key, AllowedLocations: euLocations, Client: h.client, Retry: fastRetry})
	}
	return gcpkms.Open(ctx, gcpkms.Config{KeyName: key, AllowedLocations: euLocations, ClientOptions: h.s.ClientOptions(), Retry: fastRetry})
}

func (h *harness) Close() {
	if h.client != nil {
		h.client.Close()
	}
	h.s.Stop()
}

var (
	_ kmstest.Rotator  = (*harness)(nil)
	_ kmstest.Reopener = (*harness)(nil)
)

func TestConformance(t *testing.T) {
	kmstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kmstest.Harness, error) {
		s, err := kmsserver.Start()
		if err != nil {
			return nil, err
		}
		return &harness{s: s, mode: "options"}, nil
	})
}

func TestConformanceCallerClient(t *testing.T) {
	kmstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kmstest.Harness, error) {
		s, err := kmsserver.Start()
		if err != nil {
			return nil, err
		}
		client, err := kmsapi.NewKeyManagementClient(ctx, s.ClientOptions()...)
		if err != nil {
			s.Stop()
			return nil, err
		}
		return &harness{s: s, mode: "client", client: client}, nil
	})
}

func TestConformanceURL(t *testing.T) {
	kmstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kmstest.Harness, error) {
		s, err := kmsserver.Start()
		if err != nil {
			return nil, err
		}
		t.Cleanup(gcpkms.SetURLClientOptions(s.ClientOptions()))
		return &harness{s: s, mode: "url"}, nil
	})
}

func TestRegistered(t *testing.T) {
	require.Contains(t, kms.Schemes(), gcpkms.Scheme)
}

func TestResidency(t *testing.T) {
	s := startServer(t)
	us := newKeyName("us-east1")
	require.NoError(t, s.CreateKey(us, kmspb.CryptoKey_ENCRYPT_DECRYPT))

	t.Run("refuses a key outside the zone", func(t *testing.T) {
		_, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: us, AllowedLocations: euLocations, ClientOptions: s.ClientOptions()})
		require.ErrorIs(t, err, kms.ErrConfig)
		require.ErrorContains(t, err, `"us-east1"`)
		require.ErrorContains(t, err, "europe-west1, europe-west4, europe")
		require.Zero(t, s.Calls(kmsserver.GetCryptoKey), "the location is checked before any call")
	})
	t.Run("refuses through the URL too", func(t *testing.T) {
		_, err := kms.Open(t.Context(), "gcpkms://"+us+"?allowed_locations=europe-west1,europe")
		require.ErrorIs(t, err, kms.ErrConfig)
		require.ErrorContains(t, err, `"us-east1"`)
	})
	t.Run("accepts a key in the zone", func(t *testing.T) {
		for _, loc := range []string{"europe-west1", "europe"} {
			key := newKeyName(loc)
			require.NoError(t, s.CreateKey(key, kmspb.CryptoKey_ENCRYPT_DECRYPT))
			c := open(t, s, key)
			require.Equal(t, loc, c.Location())
			require.Equal(t, key, c.KeyName())
		}
	})
	t.Run("global is a location like any other", func(t *testing.T) {
		_, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: newKeyName("global"), AllowedLocations: euLocations})
		require.ErrorIs(t, err, kms.ErrConfig)
	})
	t.Run("allowed locations are required", func(t *testing.T) {
		_, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: newKeyName("europe-west1")})
		require.ErrorIs(t, err, kms.ErrConfig)
		require.ErrorContains(t, err, "no allowed locations")
	})
	t.Run("malformed allowed location", func(t *testing.T) {
		_, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: newKeyName("europe-west1"), AllowedLocations: []string{"Europe West 1"}})
		require.ErrorIs(t, err, kms.ErrConfig)
	})
}

func TestBadKeyNames(t *testing.T) {
	for _, name := range []string{
		"",
		"projects/p",
		"projects/zonekey-test/locations/europe-west1/keyRings/r",
		"projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
		"projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/",
		"projects/zonekey-test/locations/europe-west1/keyRings//cryptoKeys/k",
		"projects//locations/europe-west1/keyRings/r/cryptoKeys/k",
		"projects/zonekey-test/locations//keyRings/r/cryptoKeys/k",
		"projects/zonekey-test/locations/Europe-West1/keyRings/r/cryptoKeys/k",
		"projects/zonekey-test/regions/europe-west1/keyRings/r/cryptoKeys/k",
		"/projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k",
		"projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k/",
		"projects/zonekey-test/locations/europe-west1/keyRings/r.s/cryptoKeys/k",
		"projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k k",
		"projects/zonekey test/locations/europe-west1/keyRings/r/cryptoKeys/k",
		"projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/" + strings.Repeat("k", 64),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: name, AllowedLocations: []string{"europe-west1"}})
			require.ErrorIs(t, err, kms.ErrConfig)
		})
	}
}

func TestBadURLs(t *testing.T) {
	for _, u := range []string{
		"gcpkms:projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k",
		"gcpkms://user@projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k",
		"gcpkms://zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k#frag",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k?create=1",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k?allowed_locations=a,b&allowed_locations=c",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k?allowed_locations=",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k?allowed_locations=us-east1",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r%2Fx/cryptoKeys/k",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
		"gcpkms://projects/zonekey-test/locations/europe-west1/keyRings/r/cryptoKeys/k?%zz",
	} {
		t.Run(u, func(t *testing.T) {
			_, err := kms.Open(t.Context(), u)
			require.ErrorIs(t, err, kms.ErrConfig)
		})
	}
}

func TestWrongPurpose(t *testing.T) {
	s := startServer(t)
	for _, p := range []kmspb.CryptoKey_CryptoKeyPurpose{
		kmspb.CryptoKey_ASYMMETRIC_SIGN,
		kmspb.CryptoKey_ASYMMETRIC_DECRYPT,
		kmspb.CryptoKey_MAC,
		kmspb.CryptoKey_RAW_ENCRYPT_DECRYPT,
	} {
		t.Run(p.String(), func(t *testing.T) {
			key := newKeyName("europe-west1")
			require.NoError(t, s.CreateKey(key, p))
			_, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: key, AllowedLocations: euLocations, ClientOptions: s.ClientOptions()})
			require.ErrorIs(t, err, kms.ErrConfig)
			require.ErrorContains(t, err, p.String())
		})
	}
}

func TestOpenErrors(t *testing.T) {
	s := startServer(t)
	cfg := func() gcpkms.Config {
		return gcpkms.Config{KeyName: newKey(t, s), AllowedLocations: euLocations, ClientOptions: s.ClientOptions(), Retry: fastRetry}
	}
	t.Run("missing key", func(t *testing.T) {
		_, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: newKeyName("europe-west1"), AllowedLocations: euLocations, ClientOptions: s.ClientOptions()})
		require.ErrorIs(t, err, kms.ErrUnknownKey)
	})
	t.Run("denied", func(t *testing.T) {
		s.InjectFaults(kmsserver.GetCryptoKey, codes.PermissionDenied)
		_, err := gcpkms.Open(t.Context(), cfg())
		require.ErrorIs(t, err, kms.ErrDenied)
	})
	t.Run("unavailable", func(t *testing.T) {
		s.InjectFaults(kmsserver.GetCryptoKey, codes.Unavailable, codes.Unavailable, codes.Unavailable, codes.Unavailable, codes.Unavailable)
		_, err := gcpkms.Open(t.Context(), cfg())
		require.ErrorIs(t, err, kms.ErrUnavailable)
	})
	t.Run("both client and options", func(t *testing.T) {
		client, err := kmsapi.NewKeyManagementClient(t.Context(), s.ClientOptions()...)
		require.NoError(t, err)
		defer client.Close()
		c := cfg()
		c.Client = client
		_, err = gcpkms.Open(t.Context(), c)
		require.ErrorIs(t, err, kms.ErrConfig)
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := gcpkms.Open(ctx, cfg())
		require.ErrorIs(t, err, context.Canceled)
	})
}

// TestFaults checks the class of each failure Cloud KMS can report, and how
// often each is tried.
func TestFaults(t *testing.T) {
	s, c := newCustodian(t)
	key := randomKey(t)
	w, err := c.Wrap(t.Context(), key, bind)
	require.NoError(t, err)

	const attempts = 5 // fastRetry.MaxAttempts
	for _, tc := range []struct {
		code  codes.Code
		want  error
		calls int
	}{
		{codes.Unavailable, kms.ErrUnavailable, attempts},
		{codes.DeadlineExceeded, kms.ErrUnavailable, attempts},
		{codes.ResourceExhausted, kms.ErrUnavailable, attempts},
		{codes.PermissionDenied, kms.ErrDenied, 1},
		{codes.Unauthenticated, kms.ErrDenied, 1},
		{codes.NotFound, kms.ErrUnknownKey, 1},
		{codes.FailedPrecondition, kms.ErrUnknownKey, 1},
		{codes.Internal, kms.ErrUnavailable, 1},
		// Codes the API does not use for these calls: still a typed,
		// unretried failure.
		{codes.DataLoss, kms.ErrUnavailable, 1},
		{codes.AlreadyExists, kms.ErrUnavailable, 1},
		{codes.OutOfRange, kms.ErrUnavailable, 1},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			faults := make([]codes.Code, attempts)
			for i := range faults {
				faults[i] = tc.code
			}

			s.ResetCounters()
			s.InjectFaults(kmsserver.Encrypt, faults...)
			got, err := c.Wrap(t.Context(), key, bind)
			require.ErrorIs(t, err, tc.want)
			require.NotErrorIs(t, err, kms.ErrTampered)
			require.Empty(t, got.Ciphertext)
			require.Equal(t, tc.calls, s.Calls(kmsserver.Encrypt), "Encrypt calls")

			s.InjectFaults(kmsserver.Decrypt, faults...)
			pt, err := c.Unwrap(t.Context(), w, bind)
			require.ErrorIs(t, err, tc.want)
			require.NotErrorIs(t, err, kms.ErrTampered)
			require.Nil(t, pt)
			require.Equal(t, tc.calls, s.Calls(kmsserver.Decrypt), "Decrypt calls")

			// Drain what was not used, so the next case starts clean.
			drainFaults(t, s, c, w)
		})
	}

	t.Run("InvalidArgument from Decrypt is tampering", func(t *testing.T) {
		s.ResetCounters()
		s.InjectFaults(kmsserver.Decrypt, codes.InvalidArgument)
		_, err := c.Unwrap(t.Context(), w, bind)
		require.ErrorIs(t, err, kms.ErrTampered)
		require.Equal(t, 1, s.Calls(kmsserver.Decrypt))
	})
	t.Run("InvalidArgument from Encrypt is configuration", func(t *testing.T) {
		s.InjectFaults(kmsserver.Encrypt, codes.InvalidArgument)
		_, err := c.Wrap(t.Context(), key, bind)
		require.ErrorIs(t, err, kms.ErrConfig)
		require.NotErrorIs(t, err, kms.ErrTampered)
	})
}

// drainFaults calls until no injected fault is left.
func drainFaults(t *testing.T, s *kmsserver.Server, c *gcpkms.Custodian, w kms.Wrapped) {
	t.Helper()
	for range 10 {
		_, errW := c.Wrap(t.Context(), randomKey(t), bind)
		_, errU := c.Unwrap(t.Context(), w, bind)
		if errW == nil && errU == nil {
			return
		}
	}
	t.Fatal("faults left over")
}

func TestRetryThenSuccess(t *testing.T) {
	s, c := newCustodian(t)
	key := randomKey(t)

	s.InjectFaults(kmsserver.Encrypt, codes.Unavailable, codes.Unavailable)
	w, err := c.Wrap(t.Context(), key, bind)
	require.NoError(t, err)
	require.Equal(t, 3, s.Calls(kmsserver.Encrypt))

	s.InjectFaults(kmsserver.Decrypt, codes.Unavailable, codes.ResourceExhausted)
	got, err := c.Unwrap(t.Context(), w, bind)
	require.NoError(t, err)
	require.Equal(t, key, got)
	require.Equal(t, 3, s.Calls(kmsserver.Decrypt))
}

func TestNoRetryOnDenied(t *testing.T) {
	s, c := newCustodian(t)
	s.InjectFaults(kmsserver.Encrypt, codes.PermissionDenied)
	_, err := c.Wrap(t.Context(), randomKey(t), bind)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Equal(t, 1, s.Calls(kmsserver.Encrypt))
}

// TestRequestChecksums checks that every request carries correct checksums
// of its payloads: the server verifies and counts them.
func TestRequestChecksums(t *testing.T) {
	s, c := newCustodian(t)
	key := randomKey(t)
	w, err := c.Wrap(t.Context(), key, bind)
	require.NoError(t, err)
	_, err = c.Unwrap(t.Context(), w, bind)
	require.NoError(t, err)
	_, err = c.Rewrap(t.Context(), w, bind)
	require.NoError(t, err)

	for _, m := range []kmsserver.Method{kmsserver.Encrypt, kmsserver.Decrypt} {
		require.Equal(t, 2, s.Calls(m), "%s calls", m)
		require.Equal(t, 2, s.VerifiedChecksums(m), "%s requests with verified checksums", m)
	}
}

// TestCorruptResponses checks that a response whose payload does not match
// its checksum is retried, and never returned.
func TestCorruptResponses(t *testing.T) {
	s, c := newCustodian(t)
	key := randomKey(t)
	w, err := c.Wrap(t.Context(), key, bind)
	require.NoError(t, err)
	s.ResetCounters()

	t.Run("Encrypt once", func(t *testing.T) {
		s.ResetCounters()
		s.CorruptResponses(kmsserver.Encrypt, 1)
		w2, err := c.Wrap(t.Context(), key, bind)
		require.NoError(t, err)
		require.Equal(t, 2, s.Calls(kmsserver.Encrypt))
		got, err := c.Unwrap(t.Context(), w2, bind)
		require.NoError(t, err)
		require.Equal(t, key, got)
	})
	t.Run("Encrypt always", func(t *testing.T) {
		s.ResetCounters()
		s.CorruptResponses(kmsserver.Encrypt, 5)
		w2, err := c.Wrap(t.Context(), key, bind)
		require.ErrorIs(t, err, gcpkms.ErrChecksum)
		require.ErrorIs(t, err, kms.ErrUnavailable)
		require.Empty(t, w2.Ciphertext)
		require.Equal(t, 5, s.Calls(kmsserver.Encrypt))
	})
	t.Run("Decrypt once", func(t *testing.T) {
		s.ResetCounters()
		s.CorruptResponses(kmsserver.Decrypt, 1)
		got, err := c.Unwrap(t.Context(), w, bind)
		require.NoError(t, err)
		require.Equal(t, key, got)
		require.Equal(t, 2, s.Calls(kmsserver.Decrypt))
	})
	t.Run("Decrypt always", func(t *testing.T) {
		s.ResetCounters()
		s.CorruptResponses(kmsserver.Decrypt, 5)
		got, err := c.Unwrap(t.Context(), w, bind)
		require.ErrorIs(t, err, gcpkms.ErrChecksum)
		require.ErrorIs(t, err, kms.ErrUnavailable)
		require.NotErrorIs(t, err, kms.ErrTampered)
		require.Nil(t, got)
		require.Equal(t, 5, s.Calls(kmsserver.Decrypt))
	})
}

// TestCorruptRequests checks requests damaged on their way to Cloud KMS:
// refused by Cloud KMS for their checksum, or accepted without the checksum
// verified. Neither is tampering, and both are retried.
func TestCorruptRequests(t *testing.T) {
	s, c := newCustodian(t)
	key := randomKey(t)
	w, err := c.Wrap(t.Context(), key, bind)
	require.NoError(t, err)

	for _, tc := range []struct {
		name   string
		inject func(kmsserver.Method, int)
	}{
		{"altered", s.CorruptRequests},
		{"checksums lost", s.DropChecksums},
	} {
		t.Run(tc.name+" once", func(t *testing.T) {
			s.ResetCounters()
			tc.inject(kmsserver.Encrypt, 1)
			w2, err := c.Wrap(t.Context(), key, bind)
			require.NoError(t, err)
			require.Equal(t, 2, s.Calls(kmsserver.Encrypt))

			tc.inject(kmsserver.Decrypt, 1)
			got, err := c.Unwrap(t.Context(), w2, bind)
			require.NoError(t, err)
			require.Equal(t, key, got)
		})
		t.Run(tc.name+" always", func(t *testing.T) {
			s.ResetCounters()
			tc.inject(kmsserver.Encrypt, 5)
			w2, err := c.Wrap(t.Context(), key, bind)
			require.ErrorIs(t, err, gcpkms.ErrChecksum)
			require.ErrorIs(t, err, kms.ErrUnavailable)
			require.Empty(t, w2.Ciphertext)
			require.Equal(t, 5, s.Calls(kmsserver.Encrypt))
		})
	}
	t.Run("altered Decrypt request always", func(t *testing.T) {
		s.ResetCounters()
		s.CorruptRequests(kmsserver.Decrypt, 5)
		got, err := c.Unwrap(t.Context(), w, bind)
		require.ErrorIs(t, err, gcpkms.ErrChecksum)
		require.ErrorIs(t, err, kms.ErrUnavailable)
		require.NotErrorIs(t, err, kms.ErrTampered, "damage in transit is not tampering")
		require.Nil(t, got)
		require.Equal(t, 5, s.Calls(kmsserver.Decrypt))
	})
}

func TestDeadlineBoundsRetries(t *testing.T) {
	s := startServer(t)
	c, err := gcpkms.Open(t.Context(), gcpkms.Config{
		KeyName:          newKey(t, s),
		AllowedLocations: euLocations,
		ClientOptions:    s.ClientOptions(),
		Retry:            gcpkms.RetryPolicy{MaxAttempts: 1000, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond},
	})
	require.NoError(t, err)
	defer c.Close()

	faults := make([]codes.Code, 1000)
	for i := range faults {
		faults[i] = codes.Unavailable
	}
	s.InjectFaults(kmsserver.Encrypt, faults...)
	const budget = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), budget)
	defer cancel()
	start := time.Now()
	_, err = c.Wrap(ctx, randomKey(t), bind)
	elapsed := time.Since(start)

	require.Error(t, err)
	if !errors.Is(err, kms.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrUnavailable or DeadlineExceeded", err)
	}
	require.Less(t, elapsed, budget+700*time.Millisecond, "retries outlived the context")
	calls := s.Calls(kmsserver.Encrypt)
	require.Greater(t, calls, 2, "retried within the deadline")
	require.Less(t, calls, 100)
}

func TestCancelDuringBackoff(t *testing.T) {
	s := startServer(t)
	c, err := gcpkms.Open(t.Context(), gcpkms.Config{
		KeyName:          newKey(t, s),
		AllowedLocations: euLocations,
		ClientOptions:    s.ClientOptions(),
		Retry:            gcpkms.RetryPolicy{InitialBackoff: time.Hour, MaxBackoff: time.Hour},
	})
	require.NoError(t, err)
	defer c.Close()
	s.InjectFaults(kmsserver.Encrypt, codes.Unavailable)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = c.Wrap(ctx, randomKey(t), bind)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, 1, s.Calls(kmsserver.Encrypt))
}

func TestRotation(t *testing.T) {
	s := startServer(t)
	keyName := newKey(t, s)
	c := open(t, s, keyName)
	ctx := t.Context()

	key1 := randomKey(t)
	w1, err := c.Wrap(ctx, key1, bind)
	require.NoError(t, err)
	require.Equal(t, uint32(1), w1.KEKVersion)

	v2, err := c.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(2), v2)
	key2 := randomKey(t)
	w2, err := c.Wrap(ctx, key2, bind)
	require.NoError(t, err)
	require.Equal(t, v2, w2.KEKVersion, "Wrap after Rotate uses the new version")

	minLive, primary, err := c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{1, 2}, [2]uint32{minLive, primary})

	got, err := c.Unwrap(ctx, w1, bind)
	require.NoError(t, err, "old ciphertexts still unwrap")
	require.Equal(t, key1, got)

	t.Run("limits", func(t *testing.T) {
		require.ErrorIs(t, c.RetireBelow(ctx, 3), errs.InvalidValue)
		require.ErrorIs(t, c.DestroyBelow(ctx, 3), errs.InvalidValue)
	})

	t.Run("retire and restore", func(t *testing.T) {
		require.NoError(t, c.RetireBelow(ctx, 2))
		require.Equal(t, kmspb.CryptoKeyVersion_DISABLED, s.VersionState(keyName, 1))
		_, err := c.Unwrap(ctx, w1, bind)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		minLive, _, err := c.KEKVersions(ctx)
		require.NoError(t, err)
		require.Equal(t, uint32(2), minLive)

		require.NoError(t, c.RetireBelow(ctx, 1), "lowering the bound again")
		require.Equal(t, kmspb.CryptoKeyVersion_ENABLED, s.VersionState(keyName, 1))
		got, err := c.Unwrap(ctx, w1, bind)
		require.NoError(t, err)
		require.Equal(t, key1, got)
	})

	t.Run("rewrap", func(t *testing.T) {
		w, err := c.Rewrap(ctx, w1, bind)
		require.NoError(t, err)
		require.Equal(t, v2, w.KEKVersion, "Rewrap moves to the primary version")
		got, err := c.Unwrap(ctx, w, bind)
		require.NoError(t, err)
		require.Equal(t, key1, got)
		w1 = w
	})

	t.Run("destroy", func(t *testing.T) {
		s.RequireDisableBeforeDestroy(true)
		defer s.RequireDisableBeforeDestroy(false)
		old, err := c.Wrap(ctx, key1, bind)
		require.NoError(t, err)
		v3, err := c.Rotate(ctx)
		require.NoError(t, err)
		require.NoError(t, c.RetireBelow(ctx, 2)) // version 1 disabled, 2 and 3 enabled
		require.NoError(t, c.DestroyBelow(ctx, v3))
		require.Equal(t, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, s.VersionState(keyName, 1), "a disabled version is destroyed too")
		require.Equal(t, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, s.VersionState(keyName, 2))
		require.Equal(t, kmspb.CryptoKeyVersion_ENABLED, s.VersionState(keyName, 3))

		_, err = c.Unwrap(ctx, old, bind)
		require.ErrorIs(t, err, kms.ErrUnknownKey, "a version scheduled for destruction refuses at once")
		s.ExpireDestruction()
		_, err = c.Unwrap(ctx, old, bind)
		require.ErrorIs(t, err, kms.ErrUnknownKey)

		minLive, primary, err := c.KEKVersions(ctx)
		require.NoError(t, err)
		require.Equal(t, [2]uint32{v3, v3}, [2]uint32{minLive, primary})

		require.NoError(t, c.DestroyBelow(ctx, v3), "repeatable")
		require.NoError(t, c.RetireBelow(ctx, 1), "lowering never revives a destroyed version")
		_, err = c.Unwrap(ctx, old, bind)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
	})
}

// TestRotatedElsewhere checks that Wrap follows a primary version changed by
// another process, and binds the version Cloud KMS used.
func TestRotatedElsewhere(t *testing.T) {
	s := startServer(t)
	keyName := newKey(t, s)
	c := open(t, s, keyName)
	admin := open(t, s, keyName)

	_, err := c.Wrap(t.Context(), randomKey(t), bind)
	require.NoError(t, err)
	v, err := admin.Rotate(t.Context())
	require.NoError(t, err)

	s.ResetCounters()
	key := randomKey(t)
	w, err := c.Wrap(t.Context(), key, bind)
	require.NoError(t, err)
	require.Equal(t, v, w.KEKVersion)
	require.Equal(t, 2, s.Calls(kmsserver.Encrypt), "one call bound to the old version, one to the new")
	got, err := c.Unwrap(t.Context(), w, bind)
	require.NoError(t, err)
	require.Equal(t, key, got)

	s.ResetCounters()
	_, err = c.Wrap(t.Context(), key, bind)
	require.NoError(t, err)
	require.Equal(t, 1, s.Calls(kmsserver.Encrypt), "the new primary is remembered")
}

func TestRotatePendingGeneration(t *testing.T) {
	s, c := newCustodian(t)
	s.SetPendingGeneration(true)
	v, err := c.Rotate(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint32(2), v)
	require.Equal(t, 2, s.Calls(kmsserver.GetCryptoKeyVersion), "one poll sees the version pending, the next enabled")
	w, err := c.Wrap(t.Context(), randomKey(t), bind)
	require.NoError(t, err)
	require.Equal(t, v, w.KEKVersion)
}

func TestRotateFailures(t *testing.T) {
	s, c := newCustodian(t)
	s.InjectFaults(kmsserver.CreateCryptoKeyVersion, codes.PermissionDenied)
	_, err := c.Rotate(t.Context())
	require.ErrorIs(t, err, kms.ErrDenied)

	s.InjectFaults(kmsserver.UpdateCryptoKeyPrimaryVersion, codes.PermissionDenied)
	_, err = c.Rotate(t.Context())
	require.ErrorIs(t, err, kms.ErrDenied)
	require.ErrorContains(t, err, "version 2 was created but is not primary")
	w, err := c.Wrap(t.Context(), randomKey(t), bind)
	require.NoError(t, err)
	require.Equal(t, uint32(1), w.KEKVersion, "the primary version is unchanged")

	s.InjectFaults(kmsserver.UpdateCryptoKeyPrimaryVersion, codes.Unavailable)
	v, err := c.Rotate(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint32(3), v)
}

// TestLostResponses checks operations whose response was lost after Cloud
// KMS acted: the retry must come to the same result.
func TestLostResponses(t *testing.T) {
	s := startServer(t)
	keyName := newKey(t, s)
	c := open(t, s, keyName)
	ctx := t.Context()

	s.LoseResponses(kmsserver.Encrypt, 1)
	key := randomKey(t)
	w, err := c.Wrap(ctx, key, bind)
	require.NoError(t, err)

	s.LoseResponses(kmsserver.Decrypt, 1)
	got, err := c.Unwrap(ctx, w, bind)
	require.NoError(t, err)
	require.Equal(t, key, got)

	s.LoseResponses(kmsserver.UpdateCryptoKeyPrimaryVersion, 1)
	v, err := c.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(2), v)

	s.LoseResponses(kmsserver.UpdateCryptoKeyVersion, 1)
	require.NoError(t, c.RetireBelow(ctx, 2))
	require.Equal(t, kmspb.CryptoKeyVersion_DISABLED, s.VersionState(keyName, 1))

	// A retried destruction meets FAILED_PRECONDITION (the version is
	// already scheduled); the custodian reads the version and succeeds.
	s.ResetCounters()
	s.LoseResponses(kmsserver.DestroyCryptoKeyVersion, 1)
	require.NoError(t, c.DestroyBelow(ctx, 2))
	require.Equal(t, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, s.VersionState(keyName, 1))
	require.Equal(t, 2, s.Calls(kmsserver.DestroyCryptoKeyVersion))
	require.Equal(t, 1, s.Calls(kmsserver.GetCryptoKeyVersion))
}

func TestListPagination(t *testing.T) {
	s, c := newCustodian(t)
	for range 30 {
		_, err := c.Rotate(t.Context())
		require.NoError(t, err)
	}
	require.NoError(t, c.RetireBelow(t.Context(), 28))
	minLive, primary, err := c.KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, [2]uint32{28, 31}, [2]uint32{minLive, primary})
	require.Greater(t, s.Calls(kmsserver.ListCryptoKeyVersions), 2, "more than one page per listing")
}

func TestClosedCallerClient(t *testing.T) {
	s := startServer(t)
	client, err := kmsapi.NewKeyManagementClient(t.Context(), s.ClientOptions()...)
	require.NoError(t, err)
	defer client.Close()
	keyName := newKey(t, s)
	c, err := gcpkms.Open(t.Context(), gcpkms.Config{KeyName: keyName, AllowedLocations: euLocations, Client: client})
	require.NoError(t, err)
	require.NoError(t, c.Close())

	_, err = c.Wrap(t.Context(), randomKey(t), bind)
	require.ErrorIs(t, err, errs.Closed)
	_, err = c.Rotate(t.Context())
	require.ErrorIs(t, err, errs.Closed)
	_, _, err = c.KEKVersions(t.Context())
	require.ErrorIs(t, err, errs.Closed)

	// The caller's client is still open.
	_, err = client.GetCryptoKey(t.Context(), &kmspb.GetCryptoKeyRequest{Name: keyName})
	require.NoError(t, err)
}

func TestWrapArguments(t *testing.T) {
	s, c := newCustodian(t)
	for _, tc := range []struct {
		name string
		key  []byte
		b    kms.Binding
		want error
	}{
		{"key too long", make([]byte, gcpkms.MaxKeySize+1), bind, errs.InvalidValue},
		{"incomplete binding", randomKey(t), kms.Binding{Zone: "eu", KeyID: "zk-1"}, kms.ErrConfig},
		{"binding too long for Cloud KMS", randomKey(t), kms.Binding{Zone: "eu", KeyID: strings.Repeat("k", 9000), Version: 1}, kms.ErrConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Wrap(t.Context(), tc.key, tc.b)
			require.ErrorIs(t, err, tc.want)
		})
	}
	require.Zero(t, s.Calls(kmsserver.Encrypt), "refused before any call")
	_, err := c.Unwrap(t.Context(), kms.Wrapped{Ciphertext: []byte{1}, KEKVersion: 0}, bind)
	require.ErrorIs(t, err, kms.ErrTampered)
}
