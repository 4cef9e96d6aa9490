package vault_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/internal/vaulttest"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

// TestStopSealRestart: a stopped or sealed Vault makes the custodian
// unavailable, quickly and without losing anything; it works again once
// Vault is back.
func TestStopSealRestart(t *testing.T) {
	srv := vaulttest.StartPersistent(t)
	srv.EnableTransit(t)
	createKey(t, srv.Client(t), "eu-users", true)
	direct := openToken(t, srv.Addr, srv.Token, "eu-users")
	p := newProxy(t, srv.Addr)
	proxied := openToken(t, p.URL, srv.Token, "eu-users")
	ctx := t.Context()
	b := binding("eu")
	key := randomKey(t)
	w, err := direct.Wrap(ctx, key, b)
	require.NoError(t, err)
	_, err = proxied.Unwrap(ctx, w, b)
	require.NoError(t, err)

	srv.Stop(t)
	start := time.Now()
	got, err := direct.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.Nil(t, got)
	_, err = direct.Wrap(ctx, key, b)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.Less(t, time.Since(start), 3*time.Second, "max attempts bound the time spent")

	// A deadline shorter than the backoff ends the call at the deadline,
	// reporting both.
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = direct.Unwrap(short, w, b)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.Less(t, time.Since(start), time.Second)

	srv.Restart(t)
	got, err = direct.Unwrap(ctx, w, b)
	require.NoError(t, err, "the key survived the restart")
	require.Equal(t, key, got)

	srv.Seal(t)
	p.reset()
	_, err = proxied.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.ErrorContains(t, err, "sealed")
	require.Equal(t, vault.DefaultMaxAttempts, p.count("/decrypt/eu-users"), "503 is retried up to the limit")
	_, err = direct.Wrap(ctx, key, b)
	require.ErrorIs(t, err, kms.ErrUnavailable)

	srv.Unseal(t)
	got, err = proxied.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
	w2, err := direct.Wrap(ctx, key, b)
	require.NoError(t, err)
	got, err = direct.Unwrap(ctx, w2, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

// TestRetries counts requests through a loopback proxy: 4xx answers are
// never retried, 5xx and connection errors are, up to the limit, and
// Rotate is not retried once a request may have reached Vault.
func TestRetries(t *testing.T) {
	srv, root := startVault(t)
	createKey(t, root, "eu-users", true)
	p := newProxy(t, srv.Addr)
	c := openToken(t, p.URL, srv.Token, "eu-users")
	ctx := t.Context()
	b := binding("eu")
	key := randomKey(t)
	w, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)

	// 400: authentication failure.
	p.reset()
	_, err = c.Unwrap(ctx, w, binding("eu"))
	require.ErrorIs(t, err, kms.ErrTampered)
	require.Equal(t, 1, p.count("/decrypt/eu-users"))

	// 403: a token without access.
	require.NoError(t, root.Sys().PutPolicy("nothing", `path "sys/nothing" { capabilities = ["read"] }`))
	s, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"nothing"}})
	require.NoError(t, err)
	denied := openToken(t, p.URL, s.Auth.ClientToken, "eu-users")
	p.reset()
	_, err = denied.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Equal(t, 1, p.count("/v1/transit/keys/eu-users"), "the key check, once")
	require.Equal(t, 1, p.count("/decrypt/eu-users"), "the probe, once")

	// 502 twice, then Vault: the third attempt succeeds.
	p.reset()
	p.fail.Store(2)
	got, err := c.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
	require.Equal(t, 3, p.count("/decrypt/eu-users"))

	// 502 more often than the limit.
	p.reset()
	p.fail.Store(10)
	start := time.Now()
	_, err = c.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.ErrorContains(t, err, "HTTP 502")
	require.Equal(t, vault.DefaultMaxAttempts, p.count("/decrypt/eu-users"))
	require.Less(t, time.Since(start), 2*time.Second)
	p.fail.Store(0)

	// max_attempts=1: no retry at all.
	one, err := kms.Open(ctx, fmt.Sprintf("vault://%s/transit/keys/eu-users?max_attempts=1&token_file=%s", hostPort(t, p.URL), writeToken(t, srv.Token)))
	require.NoError(t, err)
	defer one.Close()
	_, err = one.Unwrap(ctx, w, b) // checks the key
	require.NoError(t, err)
	p.reset()
	p.fail.Store(1)
	_, err = one.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.Equal(t, 1, p.count("/decrypt/eu-users"))
	p.fail.Store(0)

	// Rotate after a 502: the rotation may have happened, so it is not
	// repeated.
	_, before, err := c.KEKVersions(ctx)
	require.NoError(t, err)
	p.reset()
	p.fail.Store(1)
	_, err = c.Rotate(ctx)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.Equal(t, 1, p.count("/rotate"))
	p.fail.Store(0)
	_, after, err := c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, before, after, "the proxy answered; Vault did not rotate")
}

// TestConnectionErrors: connections that are refused, closed at once or
// never answered are retried up to the limit, each attempt bounded by the
// timeout.
func TestConnectionErrors(t *testing.T) {
	ctx := t.Context()
	b := binding("eu")
	w := kms.Wrapped{Ciphertext: []byte("vault:v1:" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), KEKVersion: 1}

	listen := func(t *testing.T, serve func(net.Conn)) (string, *atomic.Int32) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		var accepted atomic.Int32
		var wg sync.WaitGroup
		t.Cleanup(func() {
			ln.Close()
			wg.Wait()
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				wg.Add(1)
				go func() {
					defer wg.Done()
					serve(conn)
				}()
			}
		}()
		return "http://" + ln.Addr().String(), &accepted
	}

	t.Run("closed", func(t *testing.T) {
		addr, accepted := listen(t, func(conn net.Conn) { conn.Close() })
		c := openToken(t, addr, "t", "eu-users")
		_, err := c.Unwrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnavailable)
		require.Equal(t, int32(vault.DefaultMaxAttempts), accepted.Load())
	})
	t.Run("hung", func(t *testing.T) {
		addr, accepted := listen(t, func(conn net.Conn) {
			io.Copy(io.Discard, conn) // until the client gives up
			conn.Close()
		})
		c, err := vault.Open(ctx, vault.Config{Address: addr, Token: "t", Key: "eu-users", Timeout: 200 * time.Millisecond, MaxAttempts: 2})
		require.NoError(t, err)
		defer c.Close()
		start := time.Now()
		_, err = c.Unwrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnavailable)
		require.ErrorContains(t, err, "no answer within")
		require.Less(t, time.Since(start), 1500*time.Millisecond)
		require.Equal(t, int32(2), accepted.Load())
	})
	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := "http://" + ln.Addr().String()
		ln.Close()
		c := openToken(t, addr, "t", "eu-users")
		start := time.Now()
		_, err = c.Unwrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnavailable)
		require.ErrorContains(t, err, "refused")
		require.Less(t, time.Since(start), 2*time.Second)
	})
	t.Run("https to an http server", func(t *testing.T) {
		addr, _ := listen(t, func(conn net.Conn) {
			conn.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			conn.Close()
		})
		c := openToken(t, "https"+addr[len("http"):], "t", "eu-users")
		_, err := c.Unwrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrConfig)
	})
}

// TestTokenAuthRevoked: with token auth a revoked token is refused
// (ErrDenied) and there is nobody to log in again, unless the token file
// has been rewritten meanwhile.
func TestTokenAuthRevoked(t *testing.T) {
	srv, root := startVault(t)
	createKey(t, root, "eu-users", true)
	ctx := t.Context()
	newToken := func() string {
		s, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"root"}})
		require.NoError(t, err)
		return s.Auth.ClientToken
	}
	tok := newToken()
	path := writeToken(t, tok)
	c, err := kms.Open(ctx, fmt.Sprintf("vault://%s/transit/keys/eu-users?token_file=%s", hostPort(t, srv.Addr), path))
	require.NoError(t, err)
	defer c.Close()
	b := binding("eu")
	key := randomKey(t)
	w, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)

	require.NoError(t, root.Auth().Token().RevokeTree(tok))
	got, err := c.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Nil(t, got)

	// An agent writes a new token to the file: it is picked up.
	tok2 := newToken()
	require.NoError(t, writeFile(path, tok2))
	got, err = c.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

func TestKeyDeleted(t *testing.T) {
	srv, root := startVault(t)
	createKey(t, root, "eu-users", true)
	c := openToken(t, srv.Addr, srv.Token, "eu-users")
	ctx := t.Context()
	b := binding("eu")
	w, err := c.Wrap(ctx, randomKey(t), b)
	require.NoError(t, err)

	_, err = root.Logical().Write("transit/keys/eu-users/config", map[string]any{"deletion_allowed": true})
	require.NoError(t, err)
	_, err = root.Logical().Delete("transit/keys/eu-users")
	require.NoError(t, err)

	got, err := c.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	require.Nil(t, got)
	_, err = c.Rewrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, _, err = c.KEKVersions(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = c.Rotate(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
}

// TestKeyManager walks a KEK through rotation, rewrapping, retirement and
// destruction.
func TestKeyManager(t *testing.T) {
	srv, root := startVault(t)
	createKey(t, root, "eu-users", true)
	c := openToken(t, srv.Addr, srv.Token, "eu-users")
	ctx := t.Context()
	b := binding("eu")
	key := randomKey(t)
	w1, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)
	require.Equal(t, uint32(1), w1.KEKVersion)

	v, err := c.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(2), v)
	minLive, primary, err := c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{1, 2}, [2]uint32{minLive, primary})

	// Rewrap moves w1 to version 2 inside Vault, under the same binding
	// only.
	w2, err := c.Rewrap(ctx, w1, b)
	require.NoError(t, err)
	require.Equal(t, uint32(2), w2.KEKVersion)
	got, err := c.Unwrap(ctx, w2, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
	_, err = c.Rewrap(ctx, w1, binding("eu"))
	require.ErrorIs(t, err, kms.ErrTampered, "rewrap honours the binding")
	_, err = c.Rewrap(ctx, kms.Wrapped{Ciphertext: w1.Ciphertext, KEKVersion: 2}, b)
	require.ErrorIs(t, err, kms.ErrTampered)

	// Retire version 1.
	require.ErrorIs(t, c.RetireBelow(ctx, 3), errs.InvalidValue)
	require.ErrorIs(t, c.RetireBelow(ctx, 0), errs.InvalidValue)
	require.NoError(t, c.RetireBelow(ctx, 2))
	_, err = c.Unwrap(ctx, w1, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = c.Rewrap(ctx, w1, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	minLive, primary, err = c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{2, 2}, [2]uint32{minLive, primary})
	// Retiring can be undone.
	require.NoError(t, c.RetireBelow(ctx, 1))
	got, err = c.Unwrap(ctx, w1, b)
	require.NoError(t, err)
	require.Equal(t, key, got)

	// Destroy versions 1 and 2.
	v, err = c.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(3), v)
	w3, err := c.Rewrap(ctx, w2, b)
	require.NoError(t, err)
	require.ErrorIs(t, c.DestroyBelow(ctx, 4), errs.InvalidValue)
	require.NoError(t, c.DestroyBelow(ctx, 3))
	for _, w := range []kms.Wrapped{w1, w2} {
		_, err = c.Unwrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey, "KEK version %d", w.KEKVersion)
	}
	minLive, primary, err = c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{3, 3}, [2]uint32{minLive, primary})
	// Destroyed versions cannot be made live again, through the driver or
	// directly.
	require.ErrorIs(t, c.RetireBelow(ctx, 1), errs.InvalidValue)
	_, err = root.Logical().Write("transit/keys/eu-users/config", map[string]any{"min_decryption_version": 1})
	require.Error(t, err)
	for _, w := range []kms.Wrapped{w1, w2} {
		_, err = c.Unwrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
	}
	got, err = c.Unwrap(ctx, w3, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
	require.NoError(t, c.DestroyBelow(ctx, 2), "already destroyed: nothing to do")
	require.NoError(t, c.DestroyBelow(ctx, 3), "idempotent")

	// Two rotations racing both succeed, with distinct versions.
	var (
		wg       sync.WaitGroup
		versions [2]uint32
		rerrs    [2]error
	)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			versions[i], rerrs[i] = c.Rotate(ctx)
		}()
	}
	wg.Wait()
	require.NoError(t, rerrs[0])
	require.NoError(t, rerrs[1])
	require.NotEqual(t, versions[0], versions[1])
	require.ElementsMatch(t, []uint32{4, 5}, versions[:])
	w5, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)
	require.Equal(t, uint32(5), w5.KEKVersion)

	// After a destroy (which raised min_encryption_version to 3), retiring
	// below a higher version works: Vault wants the encryption minimum at
	// least the decryption one, so both go up.
	require.NoError(t, c.RetireBelow(ctx, 5))
	minLive, primary, err = c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{5, 5}, [2]uint32{minLive, primary})
	got, err = c.Unwrap(ctx, w5, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
	w6, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)
	require.Equal(t, uint32(5), w6.KEKVersion)
	require.NoError(t, c.RetireBelow(ctx, 3), "and lowered again")
	got, err = c.Unwrap(ctx, w3, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
}
