package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/attest"
	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
)

// caller switches the attested location the policy sees between real
// Attestors, each verifying a token of a dev issuer.
type caller struct {
	cur atomic.Pointer[attest.Attestor]
}

func (c *caller) Current(ctx context.Context) (attest.Location, string, error) {
	return c.cur.Load().Current(ctx)
}

// sink collects audit events; fail makes Record fail.
type sink struct {
	mu     sync.Mutex
	events []audit.Event
	fail   atomic.Bool
}

func (s *sink) Record(_ context.Context, e audit.Event) error {
	if s.fail.Load() {
		return errors.New("audit store is full")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
	return nil
}

func (s *sink) of(a audit.Action, d audit.Decision) []audit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []audit.Event
	for _, e := range s.events {
		if e.Action == a && e.Decision == d {
			out = append(out, e)
		}
	}
	return out
}

// custodyEnv is an env with a dev attestation issuer, attestors for callers
// in several regions, and a keyring whose policy opens zone eu to two EU
// regions and zone us to us-east1.
type custodyEnv struct {
	*env
	issuer  *attest.DevIssuer
	caller  *caller
	audit   *sink
	callers map[string]*attest.Attestor
}

const audience = "zonekey-test"

func newCustodyEnv(t *testing.T) *custodyEnv {
	t.Helper()
	iss, err := attest.NewDevIssuer("https://attest.test")
	require.NoError(t, err)
	v, err := attest.NewVerifier(iss.IssuerConfig(audience))
	require.NoError(t, err)
	e := &custodyEnv{env: newEnv(t, false), issuer: iss, caller: &caller{}, audit: &sink{}, callers: map[string]*attest.Attestor{}}
	for _, region := range []string{"europe-west1", "us-east1", "asia-east1"} {
		tok, err := iss.Token(audience, region, "svc-"+region, time.Hour)
		require.NoError(t, err)
		e.callers[region] = attest.NewAttestor(attest.StaticSource(tok), v)
	}
	// An attestor whose evidence is expired.
	expired, err := iss.Mint(map[string]any{
		"iss": iss.Issuer(), "aud": audience, "sub": "svc-old", "region": "europe-west1",
		"iat": time.Now().Add(-2 * time.Hour).Unix(), "exp": time.Now().Add(-time.Hour).Unix(),
	})
	require.NoError(t, err)
	e.callers["expired"] = attest.NewAttestor(attest.StaticSource(expired), v)
	e.as("europe-west1")
	return e
}

func (e *custodyEnv) as(region string) { e.caller.cur.Store(e.callers[region]) }

func (e *custodyEnv) keyring(t *testing.T) *keystore.Keyring {
	return e.env.keyring(t, func(c *keystore.Config) {
		// The real clock: attestation checks token expiry against it.
		c.Now = nil
		c.Policy = &keystore.RegionPolicy{
			Regions:  map[string][]string{"eu": {"europe-west1", "europe-west4"}, "us": {"us-east1"}},
			Attestor: e.caller,
		}
		c.Audit = e.audit
	})
}

func TestCustodyInZoneCallerIsServed(t *testing.T) {
	e := newCustodyEnv(t)
	k := e.keyring(t)
	d := dataKey(t, k, "eu", "alice")
	require.Equal(t, "eu", d.Zone)
	require.Equal(t, d.ID(), key(t, k, d.ID()).ID())

	e.as("us-east1")
	du := dataKey(t, k, "us", "bob")
	require.Equal(t, "us", du.Zone)
}

func TestCustodyOutOfZoneRefusedBeforeAnyKeyAccess(t *testing.T) {
	e := newCustodyEnv(t)
	// An EU process creates alice's DEK; a fresh keyring in the US then
	// tries to read it.
	id := dataKey(t, e.keyring(t), "eu", "alice").ID()
	_, unwrapsBefore := e.cust["eu"].calls()
	readsBefore := e.store.dek.Load()

	e.as("us-east1")
	k := e.keyring(t)
	_, err := k.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	require.Contains(t, err.Error(), "us-east1")
	_, err = k.Key(t.Context(), id)
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	require.NoError(t, k.Prefetch(t.Context(), []envelope.KeyID{id}))
	_, err = k.Key(t.Context(), id)
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)

	_, unwrapsAfter := e.cust["eu"].calls()
	require.Equal(t, unwrapsBefore, unwrapsAfter, "the custodian was never asked for the eu zone key")
	// Key reads the row to learn the DEK's zone, never unwraps it.
	require.LessOrEqual(t, e.store.dek.Load()-readsBefore, int64(2))
	n, _, _ := keystore.CacheSizes(k)
	require.Equal(t, 0, n, "no DEK of the zone is held by the out-of-zone keyring")

	denials := e.audit.of(audit.Access, audit.Deny)
	require.Len(t, denials, 3)
	for _, ev := range denials {
		require.Equal(t, "eu", ev.Zone)
		require.Equal(t, "us-east1", ev.Region)
		require.Equal(t, "svc-us-east1", ev.Workload)
		require.Equal(t, "https://attest.test", ev.Issuer)
		require.Contains(t, ev.Reason, "outside")
	}
	require.Equal(t, id.String(), denials[1].DEK)
}

func TestCustodyCheckedOnCacheHits(t *testing.T) {
	e := newCustodyEnv(t)
	k := e.keyring(t)
	d := dataKey(t, k, "eu", "alice")

	// The same process (cached DEK and zone key) is now attested elsewhere,
	// as after a token refresh: cached keys are no longer served.
	e.as("asia-east1")
	_, err := k.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	_, err = k.Key(t.Context(), d.ID())
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)

	e.as("europe-west1")
	require.Equal(t, d.ID(), key(t, k, d.ID()).ID())
}

func TestCustodyBadEvidence(t *testing.T) {
	e := newCustodyEnv(t)
	k := e.keyring(t)
	d := dataKey(t, k, "eu", "alice")
	e.as("expired")
	_, err := k.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrAttestation)
	require.NotErrorIs(t, err, keystore.ErrOutsideCustody)
	_, err = k.Key(t.Context(), d.ID())
	require.ErrorIs(t, err, keystore.ErrAttestation)
	require.Len(t, e.audit.of(audit.Access, audit.Deny), 2)
}

func TestCustodyUnknownZone(t *testing.T) {
	e := newCustodyEnv(t)
	_, err := e.keyring(t).DataKey(t.Context(), "apac", "alice")
	require.ErrorIs(t, err, keystore.ErrUnknownZone)
}

func TestCustodyAuditsKeyOperations(t *testing.T) {
	e := newCustodyEnv(t)
	d := dataKey(t, e.keyring(t), "eu", "alice")
	require.Len(t, e.audit.of(audit.ZoneKeyCreate, audit.Allow), 1)
	creates := e.audit.of(audit.DEKCreate, audit.Allow)
	require.Len(t, creates, 1)
	require.Equal(t, d.ID().String(), creates[0].DEK)
	require.Equal(t, "alice", creates[0].Subject)
	require.Equal(t, "europe-west1", creates[0].Region)

	// A cold keyring unwraps the zone key once and the DEK once.
	key(t, e.keyring(t), d.ID())
	zk := e.audit.of(audit.ZoneKeyUnwrap, audit.Allow)
	require.Len(t, zk, 1)
	require.Equal(t, uint32(1), zk[0].ZoneKeyVersion)
	require.NotZero(t, zk[0].KEKVersion)
	require.Equal(t, "svc-europe-west1", zk[0].Workload)
	require.Len(t, e.audit.of(audit.DEKUnwrap, audit.Allow), 1)
	for _, ev := range e.audit.events {
		require.False(t, ev.Time.IsZero())
	}
}

func TestCustodyAuditFailsClosed(t *testing.T) {
	e := newCustodyEnv(t)
	k := e.keyring(t)
	e.audit.fail.Store(true)
	_, err := k.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrAudit)
	_, err = e.store.LatestDEK(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "no key was created unrecorded")

	e.audit.fail.Store(false)
	d := dataKey(t, k, "eu", "alice")
	e.audit.fail.Store(true)
	_, err = e.keyring(t).Key(t.Context(), d.ID())
	require.ErrorIs(t, err, keystore.ErrAudit, "no key is unwrapped unrecorded")
}

// callerSpy records the caller a custodian is asked on behalf of.
type callerSpy struct {
	kms.Custodian
	mu   sync.Mutex
	seen []kms.Caller
}

func (c *callerSpy) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	cl, _ := kms.CallerFrom(ctx)
	c.mu.Lock()
	c.seen = append(c.seen, cl)
	c.mu.Unlock()
	return c.Custodian.Unwrap(ctx, w, b)
}

func TestCustodyCustodianSeesCallerEvidence(t *testing.T) {
	e := newCustodyEnv(t)
	id := dataKey(t, e.keyring(t), "eu", "alice").ID()
	spy := &callerSpy{Custodian: e.cust["eu"]}
	k := e.env.keyring(t, func(c *keystore.Config) {
		c.Now = nil
		c.Custodians["eu"] = spy
		c.Policy = &keystore.RegionPolicy{Regions: map[string][]string{"eu": {"europe-west1"}, "us": {"us-east1"}}, Attestor: e.caller}
	})
	key(t, k, id)
	require.Len(t, spy.seen, 1)
	require.Equal(t, "europe-west1", spy.seen[0].Region)
	require.NotEmpty(t, spy.seen[0].Token, "the custodian gets the caller's evidence to check it again")
}

func TestRegionPolicyCheck(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       keystore.RegionPolicy
		wantErr error
	}{
		{"restricted zone needs attestation", keystore.RegionPolicy{Regions: map[string][]string{"eu": {"europe-west1"}}}, keystore.ErrAttestation},
		{"zone with no region", keystore.RegionPolicy{Regions: map[string][]string{"eu": {}}}, keystore.ErrOutsideCustody},
		{"open zone without attestation", keystore.RegionPolicy{Regions: map[string][]string{"dev": {keystore.AnyRegion}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Check()
			if tc.wantErr == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
		})
	}
}

func TestRegionPolicyOpenZone(t *testing.T) {
	p := &keystore.RegionPolicy{Regions: map[string][]string{"dev": {keystore.AnyRegion}, "eu": {"europe-west1"}}}
	_, err := p.Authorize(t.Context(), "dev")
	require.NoError(t, err)
	_, err = p.Authorize(t.Context(), "eu")
	require.ErrorIs(t, err, keystore.ErrAttestation)
	_, err = p.Authorize(t.Context(), "us")
	require.ErrorIs(t, err, keystore.ErrAttestation)
}

// countingPolicy allows every zone and counts the calls: a Policy that says
// nothing of how long its decisions hold.
type countingPolicy struct{ calls atomic.Int64 }

func (p *countingPolicy) Authorize(context.Context, string) (keystore.Caller, error) {
	p.calls.Add(1)
	return keystore.Caller{}, nil
}

// A Policy that does not say how long its decisions hold is asked on every
// call, cache hits included.
func TestCustodyPolicyAskedOnEveryHit(t *testing.T) {
	e := newEnv(t, false)
	p := &countingPolicy{}
	k := e.keyring(t, func(c *keystore.Config) { c.Policy = p })
	d := dataKey(t, k, "eu", "alice")
	before := p.calls.Load()
	for range 5 {
		dataKey(t, k, "eu", "alice")
		key(t, k, d.ID())
	}
	require.Equal(t, before+10, p.calls.Load())
}

// A RegionPolicy's decision is reused by cache hits for at most a second
// of the keyring's clock when there is no attestation to follow: a change
// of its regions is seen within that.
func TestCustodyRegionDecisionBoundWithoutAttestation(t *testing.T) {
	e := newEnv(t, false)
	p := &keystore.RegionPolicy{Regions: map[string][]string{"eu": {keystore.AnyRegion}, "us": {keystore.AnyRegion}}}
	k := e.keyring(t, func(c *keystore.Config) { c.Policy = p })
	d := dataKey(t, k, "eu", "alice")

	// Closing the zone (between calls: the map is not for concurrent
	// change) shows when the policy is asked again.
	p.Regions = map[string][]string{"eu": {"europe-west1"}, "us": {keystore.AnyRegion}}
	dataKey(t, k, "eu", "alice")
	e.clock.Advance(999 * time.Millisecond)
	key(t, k, d.ID())
	e.clock.Advance(time.Millisecond)
	_, err := k.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrAttestation)
	_, err = k.Key(t.Context(), d.ID())
	require.ErrorIs(t, err, keystore.ErrAttestation)

	// A denial is not reused: reopened, the zone is served at once.
	p.Regions = map[string][]string{"eu": {keystore.AnyRegion}, "us": {keystore.AnyRegion}}
	key(t, k, d.ID())
}

// switchSource is an attestation Source whose token the test changes.
type switchSource struct{ tok atomic.Pointer[string] }

func (s *switchSource) Token(context.Context) (string, error) { return *s.tok.Load(), nil }

// With an *attest.Attestor, a decision is reused no longer than the
// Attestor keeps its answer: once it has looked at new evidence placing the
// process outside the zone, cache hits are refused.
func TestCustodyRegionDecisionFollowsAttestation(t *testing.T) {
	e := newCustodyEnv(t)
	v, err := attest.NewVerifier(e.issuer.IssuerConfig(audience))
	require.NoError(t, err)
	token := func(region string) *string {
		tok, err := e.issuer.Token(audience, region, "svc", time.Hour)
		require.NoError(t, err)
		return &tok
	}
	src := &switchSource{}
	src.tok.Store(token("europe-west1"))
	a := attest.NewAttestor(src, v)
	const refresh = 200 * time.Millisecond
	a.RefreshInterval = refresh
	k := e.env.keyring(t, func(c *keystore.Config) {
		c.Now = nil
		c.Policy = &keystore.RegionPolicy{Regions: map[string][]string{"eu": {"europe-west1"}, "us": {"us-east1"}}, Attestor: a}
	})
	d := dataKey(t, k, "eu", "alice")
	key(t, k, d.ID())

	src.tok.Store(token("asia-east1"))
	deadline := time.Now().Add(refresh + 100*time.Millisecond) // and the coarse clock's lead
	for {
		_, derr := k.DataKey(t.Context(), "eu", "alice")
		_, kerr := k.Key(t.Context(), d.ID())
		if derr != nil && kerr != nil {
			require.ErrorIs(t, derr, keystore.ErrOutsideCustody)
			require.ErrorIs(t, kerr, keystore.ErrOutsideCustody)
			break
		}
		require.True(t, time.Now().Before(deadline), "cache hits still served after the attestor's refresh")
		time.Sleep(10 * time.Millisecond)
	}
	src.tok.Store(token("europe-west4"))
	time.Sleep(refresh + 50*time.Millisecond)
	_, err = k.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody, "europe-west4 is not listed for eu")
	src.tok.Store(token("europe-west1"))
	time.Sleep(refresh + 50*time.Millisecond)
	require.Equal(t, d.ID(), dataKey(t, k, "eu", "alice").ID())
}

// hitKeyring returns a keyring over a bolt store and a local custodian
// for zone eu, open to every region as in development, with the DEK of
// subject cached.
func hitKeyring(b *testing.B, subject string) (*keystore.Keyring, *keystore.DEK) {
	dir := b.TempDir()
	bs, err := boltstore.Open(filepath.Join(dir, "keystore.db"), nil)
	require.NoError(b, err)
	b.Cleanup(func() { bs.Close() })
	c, err := kms.Open(b.Context(), "local://"+filepath.ToSlash(filepath.Join(dir, "eu.kek"))+"?create=1")
	require.NoError(b, err)
	b.Cleanup(func() { c.Close() })
	k, err := keystore.New(keystore.Config{
		Store:      bs,
		Custodians: map[string]kms.Custodian{"eu": c},
		Policy:     &keystore.RegionPolicy{Regions: map[string][]string{"eu": {keystore.AnyRegion}}},
	})
	require.NoError(b, err)
	b.Cleanup(func() { k.Close() })
	d, err := k.DataKey(b.Context(), "eu", subject)
	require.NoError(b, err)
	return k, d
}

// BenchmarkCacheHits measures DataKey and Key with the DEK cached: the
// keyring's share of every field encrypt and decrypt.
func BenchmarkCacheHits(b *testing.B) {
	const subject = "user-000000"
	k, d := hitKeyring(b, subject)
	ctx := b.Context()
	b.Run("DataKey", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := k.DataKey(ctx, "eu", subject); err != nil {
				b.Fatal(err)
			}
		}
	})
	id := d.ID()
	b.Run("Key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := k.Key(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// SharedAuxKeys returns what AuxKeys returns, without a copy, and
// CurrentAuxKey what AuxKey returns for version 0; both follow rotations
// and custody as those do.
func TestSharedAuxKeys(t *testing.T) {
	e := newCustodyEnv(t)
	k := e.keyring(t)
	ctx := t.Context()
	shared, err := k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx") // creates version 1
	require.NoError(t, err)
	copied, err := k.AuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	require.Equal(t, copied, shared)
	require.Len(t, shared, 1)

	cur, err := k.CurrentAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	require.Same(t, shared[0], cur)

	_, err = k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	shared, err = k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	require.Len(t, shared, 2, "a rotation in this process is seen at once")
	require.Equal(t, uint32(2), shared[0].Version)
	cur, err = k.CurrentAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	require.Equal(t, uint32(2), cur.Version)
	det, err := k.CurrentAuxKey(ctx, "eu", keystore.AuxDeterministic, "TaxID") // created
	require.NoError(t, err)
	require.NotNil(t, det.Det())

	// An out-of-zone caller is refused, and the refusal audited, cached
	// versions or not.
	e.as("asia-east1")
	_, err = k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	_, err = k.CurrentAuxKey(ctx, "eu", keystore.AuxDeterministic, "TaxID")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	require.NotEmpty(t, e.audit.of(audit.Access, audit.Deny))
	e.as("europe-west1")
	_, err = k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "no\x00name")
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	_, err = k.SharedAuxKeys(ctx, "mars", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrUnknownZone)
	require.NoError(t, k.Close())
	_, err = k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrClosed)
}

// With a RegionPolicy decision cached, SharedAuxKeys still sees a closed
// zone within the decision's second.
func TestSharedAuxKeysDecisionBound(t *testing.T) {
	e := newEnv(t, false)
	p := &keystore.RegionPolicy{Regions: map[string][]string{"eu": {keystore.AnyRegion}, "us": {keystore.AnyRegion}}}
	k := e.keyring(t, func(c *keystore.Config) { c.Policy = p })
	ctx := t.Context()
	_, err := k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	p.Regions = map[string][]string{"eu": {"europe-west1"}, "us": {keystore.AnyRegion}}
	_, err = k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	e.clock.Advance(time.Second)
	_, err = k.SharedAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrAttestation)
}

// revocable wraps an *attest.Attestor to add a check of its own: it refuses
// while revoked is set. It overrides Current, the method Attestor names,
// and inherits the embedded Attestor's other methods.
type revocable struct {
	*attest.Attestor
	revoked *atomic.Bool
}

func (r revocable) Current(ctx context.Context) (attest.Location, string, error) {
	if r.revoked.Load() {
		return attest.Location{}, "", fmt.Errorf("%w: workload identity revoked", keystore.ErrAttestation)
	}
	return r.Attestor.Current(ctx)
}

// TestCustodyWrappedAttestorAskedEveryCall: a RegionPolicy whose Attestor
// wraps *attest.Attestor asks the wrapper's Current on every call, cache
// hits and misses, DEKs and index keys alike: the wrapper's own check is
// not skipped through the CurrentUntil it inherits.
func TestCustodyWrappedAttestorAskedEveryCall(t *testing.T) {
	e := newCustodyEnv(t)
	revoked := &atomic.Bool{}
	k := e.env.keyring(t, func(c *keystore.Config) {
		c.Now = nil
		c.Policy = &keystore.RegionPolicy{
			Regions:  map[string][]string{"eu": {"europe-west1"}},
			Attestor: revocable{Attestor: e.callers["europe-west1"], revoked: revoked},
		}
	})
	alice := dataKey(t, k, "eu", "alice")
	key(t, k, alice.ID())
	_, err := k.AuxKeys(t.Context(), "eu", keystore.AuxIndex, "Email")
	require.NoError(t, err)

	revoked.Store(true)
	for name, call := range map[string]func() error{
		"DataKey hit":  func() error { _, err := k.DataKey(t.Context(), "eu", "alice"); return err },
		"DataKey miss": func() error { _, err := k.DataKey(t.Context(), "eu", "bob"); return err },
		"Key hit":      func() error { _, err := k.Key(t.Context(), alice.ID()); return err },
		"AuxKeys":      func() error { _, err := k.AuxKeys(t.Context(), "eu", keystore.AuxIndex, "Email"); return err },
	} {
		require.ErrorIs(t, call(), keystore.ErrAttestation, name)
	}
	revoked.Store(false)
	dataKey(t, k, "eu", "bob")
}

// TestCustodyIssuersPerZone: a zone that lists its issuers refuses evidence
// of another issuer the Verifier trusts, with ErrAttestation, whatever
// region it vouches for; a zone without a list takes both.
func TestCustodyIssuersPerZone(t *testing.T) {
	e := newCustodyEnv(t)
	dev, err := attest.NewDevIssuer("https://dev-attest.test")
	require.NoError(t, err)
	v, err := attest.NewVerifier(e.issuer.IssuerConfig(audience), dev.IssuerConfig(audience))
	require.NoError(t, err)
	attestor := func(iss *attest.DevIssuer) *attest.Attestor {
		tok, err := iss.Token(audience, "europe-west1", "svc", time.Hour)
		require.NoError(t, err)
		return attest.NewAttestor(attest.StaticSource(tok), v)
	}
	keyring := func(a *attest.Attestor) *keystore.Keyring {
		return e.env.keyring(t, func(c *keystore.Config) {
			c.Now = nil
			c.Policy = &keystore.RegionPolicy{
				Regions:  map[string][]string{"eu": {"europe-west1"}, "us": {"europe-west1"}},
				Issuers:  map[string][]string{"eu": {e.issuer.Issuer()}},
				Attestor: a,
			}
		})
	}
	prod, devK := keyring(attestor(e.issuer)), keyring(attestor(dev))
	dataKey(t, prod, "eu", "alice")
	_, err = devK.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrAttestation, "a dev issuer's evidence for a production zone")
	require.ErrorContains(t, err, "https://dev-attest.test")
	dataKey(t, devK, "us", "alice") // no list: any trusted issuer
	dataKey(t, prod, "us", "bob")
}
