// Package vault is a key custodian backed by HashiCorp Vault's Transit
// secrets engine: the zone's KEK is a Transit key that never leaves Vault,
// and Vault itself decides, caller by caller, who may wrap and unwrap under
// it.
//
// Open it by URL through kms.Open (importing this package registers the
// "vault" scheme), or with [Open] and a [Config]:
//
//	vault://vault.eu.example:8200/transit/keys/eu-users?auth=jwt&role=eu
//	vault://127.0.0.1:8200/eu/transit/keys/eu-users?token_file=/run/vault/token
//	vault:///transit/keys/eu-users                (address from VAULT_ADDR)
//
// The path is MOUNT/keys/KEY: the Transit mount (which may contain slashes)
// and the key's name. [ParseURL] documents every parameter.
//
// # Custody at the custodian
//
// With auth=jwt the driver logs in to Vault's JWT auth method with the
// attestation of the caller on whose behalf it acts: the raw token of the
// kms.Caller that the keystore puts into the context of every Wrap and
// Unwrap. Vault verifies that token against the attestation issuer's keys
// and the role's bound claims (the caller's region) and grants a token whose
// policy allows Transit operations on the zone's key only. A caller outside
// the zone is thus refused by Vault even if the SDK's own region check is
// skipped or wrong; the driver reports it as kms.ErrDenied. The Vault token
// is cached per role and attestation token until shortly before it expires,
// and never beyond the attestation's own expiry.
//
// With auth=token (the default) every call uses one Vault token, whatever
// the caller: custody then rests on the SDK's check and on where that token
// is available. It suits the custodian's own tools (rotation, shredding) and
// deployments that confine the token to the zone.
//
// # Bindings
//
// The Transit key must be created with derived=true. Every wrap, unwrap and
// rewrap passes the zone key's binding ([kms.Binding.Bytes], base64) as the
// derivation context, so a wrapped zone key relabelled to another zone, key
// id or version fails to unwrap (kms.ErrTampered). Vault's associated_data
// parameter is not used: rewrap ignores it (hashicorp/vault#29532), while a
// derived key's context is honoured by encrypt, decrypt and rewrap alike. A
// non-derived key would silently ignore the context, so the driver checks
// the key once before its first use and refuses one that is not derived
// (kms.ErrConfig); see [Custodian.CreateKey] to make a suitable key. The
// check reads the key's settings if the token may, and otherwise probes
// with requests that need only the decrypt, or only the encrypt, permission
// and never create a key. Any answer that the key does not exist makes the
// driver check again before the key's next use.
//
// Vault's encrypt creates a missing key (an "upsert") when the token may
// create on MOUNT/encrypt/KEY, and with a context the new key is derived.
// Policies should therefore grant update, never create, on encrypt, and
// the mount should have upserts off (transit/config/keys
// disable_upsert=true); docs/vault.md explains.
//
// # Wrap-only access
//
// A process outside the zone that must put a key into it, as when a
// subject moves between zones, can be given a JWT role whose policy allows
// update on MOUNT/encrypt/KEY and nothing else. Its custodian, opened with
// role=R, wraps; everything else (Unwrap, Rewrap, key management) is
// refused by Vault with kms.ErrDenied. The key check needs nothing more
// than that permission. docs/vault.md, "Moving subjects into a zone: the
// wrap-only role", gives the policy and the role.
//
// # Destroying the key
//
// [Custodian.Destroy] deletes the Transit key, every version, for the
// shred of the whole zone, setting deletion_allowed first if Vault refuses
// the delete without it. The custodian then refuses every call with
// kms.ErrUnknownKey without asking Vault, so that a wrap can never reach a
// key of the same name created anew by an upsert. Other custodians of the
// key see kms.ErrUnknownKey, or kms.ErrDenied where their token may only
// encrypt; docs/vault.md lists, as measured, what each kind of token sees,
// including the one case (a token that may create, upserts on, a wrap
// before anything else) where Vault re-creates the key.
//
// # Ciphertext
//
// kms.Wrapped.Ciphertext holds Vault's ciphertext string exactly as Vault
// returned it, "vault:v<N>:<base64>", and KEKVersion is N. Unwrap parses it
// strictly (decimal version without leading zeros, equal to KEKVersion;
// canonical standard base64 of a plausible length) before sending it, since
// Vault itself tolerates variants (version 0, non-canonical base64) that
// would let an altered ciphertext through.
//
// # Errors and retries
//
// Vault's answers map to the kms sentinels: an authentication failure or a
// malformed ciphertext is kms.ErrTampered; a missing key, a KEK version
// below min_decryption_version or trimmed is kms.ErrUnknownKey; 403 and a
// refused JWT login are kms.ErrDenied; connection errors, 429, 5xx and a
// sealed Vault are kms.ErrUnavailable. Only the last class is retried, with
// exponential backoff and jitter, at most [Config.MaxAttempts] times and
// never beyond the context's deadline; the client's own retries are off.
// Rotate, which is not idempotent, is retried only when the request cannot
// have been processed (connection refused, 429, 503).
//
// docs/vault.md describes the Vault set-up for one zone.
package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

// Scheme is the URL scheme under which this package registers its opener
// with package kms.
const Scheme = "vault"

// MaxKeySize is the longest key Wrap accepts, in bytes. Zone keys are 32.
const MaxKeySize = 64

// MaxBatch is the largest number of items WrapBatch and UnwrapBatch accept
// in one call.
const MaxBatch = 1000

// Defaults for Config fields left zero.
const (
	// DefaultMount is the Transit mount path.
	DefaultMount = "transit"
	// DefaultJWTMount is the JWT auth mount path.
	DefaultJWTMount = "jwt"
	// DefaultPort is the port of a URL's host that names none.
	DefaultPort = "8200"
	// DefaultTimeout bounds each attempt of a request.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxAttempts is the number of attempts of a request that
	// fails transiently.
	DefaultMaxAttempts = 3
	// DefaultTokenCacheSize is the number of Vault tokens AuthJWT caches.
	DefaultTokenCacheSize = 1024
)

// Limits.
const (
	maxAttemptsLimit = 10
	maxBody          = 4 << 20 // bytes of a Vault response read
	maxTokenLifetime = time.Hour
	backoffBase      = 100 * time.Millisecond
	backoffMax       = 2 * time.Second
)

// Environment variables that Open honours, as the Vault CLI does. Other
// VAULT_* variables do not set the address, token, namespace, headers, TLS
// or retries (VAULT_SKIP_VERIFY, in particular, is ignored); an HTTP proxy
// is taken from HTTPS_PROXY, HTTP_PROXY and NO_PROXY.
const (
	// EnvAddr is the server's address when Config.Address is empty.
	EnvAddr = "VAULT_ADDR"
	// EnvToken is the token of AuthToken when neither Config.Token nor
	// Config.TokenFile is set. It is never used with AuthJWT.
	EnvToken = "VAULT_TOKEN"
	// EnvCACert is a PEM file of CA certificates when Config.CACert is
	// empty.
	EnvCACert = "VAULT_CACERT"
)

func init() {
	kms.Register(Scheme, openURL)
}

// AuthMethod is how the driver authenticates to Vault.
type AuthMethod string

// Authentication methods.
const (
	// AuthToken uses one Vault token for every call: Config.Token,
	// the content of Config.TokenFile, or $VAULT_TOKEN.
	AuthToken AuthMethod = "token"
	// AuthJWT logs in to Vault's JWT auth method with the attestation
	// token of the caller (kms.CallerFrom(ctx).Token), under Config.Role.
	AuthJWT AuthMethod = "jwt"
)

// Config configures Open. ParseURL makes one from a URL.
type Config struct {
	// Address is the base URL of the Vault server,
	// "https://vault.example:8200". Empty means $VAULT_ADDR. Plain http is
	// refused unless the host is a loopback address (127.0.0.0/8, ::1,
	// localhost) or AllowHTTP is set.
	Address string
	// AllowHTTP permits an http:// Address to a non-loopback host: tokens,
	// attestations and zone keys then cross the network unencrypted.
	AllowHTTP bool
	// CACert is a PEM file of the CA certificates that sign the server's
	// certificate. Empty means $VAULT_CACERT, and if that is empty too, the
	// system's roots.
	CACert string
	// Namespace is the Vault Enterprise namespace, or empty.
	Namespace string

	// Mount is the path of the Transit mount, such as "transit" or
	// "eu/transit". Empty means DefaultMount.
	Mount string
	// Key is the name of the Transit key. Required.
	Key string
	// Create makes Open create the key (derived, aes256-gcm96, not
	// exportable) if it does not exist. It requires AuthToken and a token
	// allowed to create keys.
	Create bool

	// Auth selects the authentication method; empty means AuthToken.
	Auth AuthMethod
	// Token is the Vault token for AuthToken.
	Token string
	// TokenFile is a file holding the Vault token for AuthToken, such as a
	// Vault Agent sink. It is read by Open, and read again when Vault
	// refuses the token, so that a token the agent renewed is picked up.
	TokenFile string
	// Role is the JWT auth role for AuthJWT. Required with AuthJWT.
	Role string
	// JWTMount is the path of the JWT auth mount; empty means
	// DefaultJWTMount.
	JWTMount string
	// TokenCacheSize bounds the number of Vault tokens cached by AuthJWT,
	// one per role and attestation token. Zero means DefaultTokenCacheSize.
	TokenCacheSize int

	// Timeout bounds each attempt of a request. Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxAttempts bounds the attempts of a request that fails transiently
	// (connection error, 429, 5xx), 1 to 10. Zero means
	// DefaultMaxAttempts.
	MaxAttempts int
}

// Custodian wraps and unwraps zone keys with one Vault Transit key. It
// implements kms.Custodian, kms.KeyManager and kms.Destroyer, and is safe
// for concurrent use.
type Custodian struct {
	client    *api.Client
	transport *http.Transport
	addr      string // the server's base URL, for messages
	mount     string
	key       string
	auth      AuthMethod
	role      string
	jwtMount  string
	tokenFile string
	timeout   time.Duration
	attempts  int
	cacheSize int

	checked   atomic.Bool // the key was found to be a derived encryption key
	closed    atomic.Bool
	destroyed atomic.Bool // Destroy deleted the key

	mu       sync.Mutex
	static   string                  // the token of AuthToken
	tokens   map[tokenKey]tokenEntry // AuthJWT's cache
	inflight map[tokenKey]*login     // AuthJWT's logins in progress
}

var (
	_ kms.Custodian  = (*Custodian)(nil)
	_ kms.KeyManager = (*Custodian)(nil)
	_ kms.Destroyer  = (*Custodian)(nil)
)

// Open returns a custodian for the Transit key cfg names. It contacts Vault
// only if cfg.Create is set; otherwise the key is checked on first use.
// Configuration errors wrap kms.ErrConfig.
func Open(ctx context.Context, cfg Config) (*Custodian, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := newCustodian(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Create {
		if err := c.CreateKey(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func configError(format string, args ...any) error {
	return fmt.Errorf("%w: vault: %s", kms.ErrConfig, fmt.Sprintf(format, args...))
}

func newCustodian(cfg Config) (*Custodian, error) {
	mount := cfg.Mount
	if mount == "" {
		mount = DefaultMount
	}
	mount = strings.Trim(mount, "/")
	if err := checkPath("mount", mount); err != nil {
		return nil, err
	}
	if err := checkName("key name", cfg.Key); err != nil {
		return nil, err
	}

	addr := cfg.Address
	if addr == "" {
		addr = os.Getenv(EnvAddr)
		if addr == "" {
			return nil, configError("no Vault address: give one in the URL or set %s", EnvAddr)
		}
	}
	base, err := checkAddress(addr, cfg.AllowHTTP)
	if err != nil {
		return nil, err
	}

	c := &Custodian{
		addr:      base.String(),
		mount:     mount,
		key:       cfg.Key,
		auth:      cfg.Auth,
		timeout:   cfg.Timeout,
		attempts:  cfg.MaxAttempts,
		cacheSize: cfg.TokenCacheSize,
	}
	if c.auth == "" {
		c.auth = AuthToken
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.timeout < 0 {
		return nil, configError("negative timeout %v", c.timeout)
	}
	if c.attempts == 0 {
		c.attempts = DefaultMaxAttempts
	}
	if c.attempts < 1 || c.attempts > maxAttemptsLimit {
		return nil, configError("max attempts %d is not between 1 and %d", c.attempts, maxAttemptsLimit)
	}
	if c.cacheSize == 0 {
		c.cacheSize = DefaultTokenCacheSize
	}
	if c.cacheSize < 0 {
		return nil, configError("negative token cache size %d", c.cacheSize)
	}

	switch c.auth {
	case AuthToken:
		if cfg.Role != "" || cfg.JWTMount != "" {
			return nil, configError("a JWT role or mount is given, but auth is %q", AuthToken)
		}
		switch {
		case cfg.Token != "" && cfg.TokenFile != "":
			return nil, configError("both a token and a token file are given")
		case cfg.Token != "":
			c.static = cfg.Token
		case cfg.TokenFile != "":
			c.tokenFile = cfg.TokenFile
			tok, err := readTokenFile(cfg.TokenFile)
			if err != nil {
				return nil, err
			}
			c.static = tok
		default:
			c.static = strings.TrimSpace(os.Getenv(EnvToken))
			if c.static == "" {
				return nil, configError("auth=token, but no token is given (token_file=PATH, Config.Token or %s)", EnvToken)
			}
		}
		if err := checkToken(c.static); err != nil {
			return nil, err
		}
	case AuthJWT:
		if cfg.Token != "" || cfg.TokenFile != "" {
			return nil, configError("a token is given, but auth is %q: the caller's attestation is used instead", AuthJWT)
		}
		if cfg.Create {
			return nil, configError("create needs auth=token: an attested caller's policy does not create keys")
		}
		if err := checkName("JWT role", cfg.Role); err != nil {
			return nil, err
		}
		c.role = cfg.Role
		c.jwtMount = strings.Trim(cfg.JWTMount, "/")
		if c.jwtMount == "" {
			c.jwtMount = DefaultJWTMount
		}
		if err := checkPath("JWT mount", c.jwtMount); err != nil {
			return nil, err
		}
		c.tokens = make(map[tokenKey]tokenEntry)
		c.inflight = make(map[tokenKey]*login)
	default:
		return nil, configError("unknown auth method %q (want %q or %q)", c.auth, AuthToken, AuthJWT)
	}
	if cfg.Namespace != "" {
		if err := checkPath("namespace", strings.Trim(cfg.Namespace, "/")); err != nil {
			return nil, err
		}
	}

	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	caFile := cfg.CACert
	if caFile == "" {
		caFile = os.Getenv(EnvCACert)
	}
	if caFile != "" && base.Scheme == "https" {
		pool, err := loadCAs(caFile)
		if err != nil {
			return nil, err
		}
		tlsConfig.RootCAs = pool
	}
	c.transport = &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   5 * time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	client, err := api.NewClient(&api.Config{
		Address: c.addr,
		HttpClient: &http.Client{
			Transport: c.transport,
			// The Vault client follows redirects itself, refusing
			// downgrades from https to http.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		// Attempts are timed by the driver, through the context.
		Timeout: 0,
		// The driver retries; the client must not.
		MaxRetries: 0,
		CheckRetry: func(context.Context, *http.Response, error) (bool, error) { return false, nil },
	})
	if err != nil {
		return nil, configError("Vault client: %v", err)
	}
	// NewClient takes VAULT_TOKEN, VAULT_NAMESPACE and VAULT_HEADERS from
	// the environment; every request sets its own token, and the namespace
	// and headers are the configured ones only.
	client.ClearToken()
	client.SetHeaders(http.Header{api.RequestHeaderName: []string{"true"}})
	if cfg.Namespace != "" {
		client.SetNamespace(cfg.Namespace)
	}
	c.client = client
	return c, nil
}

// checkAddress parses a Vault base URL and applies the plain-http rule.
func checkAddress(addr string, allowHTTP bool) (*url.URL, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return nil, configError("address: %v", kms.URLErrorReason(err))
	}
	if u.User != nil {
		return nil, configError("address of the Vault server must not contain user information")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, configError("address %q: scheme must be http or https", addr)
	case u.Host == "" || u.Hostname() == "":
		return nil, configError("address %q has no host", addr)
	case !validPort(u.Port()):
		return nil, configError("address %q: port must be 1 to 65535", addr)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return nil, configError("address %q must be scheme://host:port only", addr)
	}
	if u.Scheme == "http" && !allowHTTP && !isLoopback(u.Hostname()) {
		return nil, configError("address %q is plain http to a host that is not loopback: use https, or allow it explicitly (tls=0 in the URL, Config.AllowHTTP)", addr)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// validPort reports whether p, a URL's port, is empty or 1 to 65535.
func validPort(p string) bool {
	if p == "" {
		return true
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && p[0] != '+'
}

// isLoopback reports whether host is a loopback IP address or "localhost".
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, configError("reading CA certificates: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, configError("no PEM certificate in %s", path)
	}
	return pool, nil
}

func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", configError("reading token file: %v", err)
	}
	tok := strings.TrimSpace(string(b))
	clear(b)
	if tok == "" {
		return "", configError("token file %s is empty", path)
	}
	if err := checkToken(tok); err != nil {
		return "", err
	}
	return tok, nil
}

// checkToken refuses a token that cannot be sent in a header. The error does
// not quote it.
func checkToken(tok string) error {
	for i := 0; i < len(tok); i++ {
		if tok[i] < 0x21 || tok[i] > 0x7e {
			return configError("the Vault token contains a character that is not printable ASCII")
		}
	}
	return nil
}

// checkName accepts a Vault path segment of letters, digits, '-', '_' and
// '.', not "." or "..".
func checkName(what, s string) error {
	if s == "" {
		return configError("empty %s", what)
	}
	if len(s) > 128 {
		return configError("%s is longer than 128 bytes", what)
	}
	if s == "." || s == ".." {
		return configError("%s %q is not allowed", what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return configError("%s %q: only letters, digits, '-', '_' and '.' are allowed", what, s)
		}
	}
	return nil
}

// checkPath accepts one or more names joined by '/'.
func checkPath(what, p string) error {
	if p == "" {
		return configError("empty %s", what)
	}
	for _, seg := range strings.Split(p, "/") {
		if err := checkName(what+" segment", seg); err != nil {
			return err
		}
	}
	return nil
}

// openURL is the kms.Opener of the "vault" scheme.
func openURL(ctx context.Context, u *url.URL) (kms.Custodian, error) {
	cfg, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	c, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ParseURL returns the Config that a vault:// URL describes, without
// reading the environment or contacting Vault:
//
//	vault://HOST[:PORT]/MOUNT/keys/KEY[?PARAMS]
//	vault:///MOUNT/keys/KEY[?PARAMS]        address from $VAULT_ADDR
//
// MOUNT may contain slashes; PORT defaults to 8200. The parameters are:
//
//	auth=token|jwt      authentication (default token)
//	token_file=PATH     token file for auth=token (default: $VAULT_TOKEN)
//	role=R              JWT auth role, required with auth=jwt
//	jwt_mount=M         JWT auth mount (default jwt)
//	tls=0|1             with a host: 1 for https, 0 for http; default https,
//	                    except http for a loopback host (127.0.0.1, ::1,
//	                    localhost). With $VAULT_ADDR only tls=0 is allowed,
//	                    and it permits an http $VAULT_ADDR to a remote host.
//	insecure_http=1     the same as tls=0
//	ca_cert=PATH        CA certificates, PEM (default: $VAULT_CACERT, then
//	                    the system's roots)
//	namespace=NS        Vault Enterprise namespace
//	create=1            create the key if it does not exist (auth=token)
//	timeout=DURATION    per attempt (default 10s)
//	max_attempts=N      attempts of a transiently failing request (default 3)
//
// Errors wrap kms.ErrConfig.
func ParseURL(rawURL string) (Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return Config{}, configError("URL: %v", kms.URLErrorReason(err))
	}
	return parseURL(u)
}

func parseURL(u *url.URL) (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: vault: URL %s: %s (want vault://host:port/MOUNT/keys/KEY?auth=jwt&role=R)",
			kms.ErrConfig, kms.RedactedURL(u), fmt.Sprintf(format, args...))
	}
	switch {
	case u.Scheme != Scheme:
		return bad("scheme is not %q", Scheme)
	case u.Opaque != "":
		return bad("missing // after the scheme")
	case u.User != nil:
		return bad("user information is not allowed; give a token with token_file or %s", EnvToken)
	case u.Fragment != "":
		return bad("a fragment is not allowed")
	case u.RawPath != "":
		return bad("escaped characters in the path are not allowed")
	}
	var cfg Config

	segs := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	n := len(segs)
	if n < 3 || segs[n-2] != "keys" || !strings.HasPrefix(u.Path, "/") {
		return bad("the path must be /MOUNT/keys/KEY")
	}
	cfg.Mount = strings.Join(segs[:n-2], "/")
	cfg.Key = segs[n-1]
	if err := checkPath("mount", cfg.Mount); err != nil {
		return bad("%v", err)
	}
	if err := checkName("key name", cfg.Key); err != nil {
		return bad("%v", err)
	}

	query, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("malformed query")
	}
	param := func(k string) (string, bool, error) {
		vs, ok := query[k]
		if !ok {
			return "", false, nil
		}
		if len(vs) != 1 {
			return "", false, fmt.Errorf("parameter %s given %d times", k, len(vs))
		}
		return vs[0], true, nil
	}
	boolean := func(k string) (value, set bool, err error) {
		v, ok, err := param(k)
		if err != nil || !ok {
			return false, false, err
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, false, fmt.Errorf("parameter %s=%q is not a boolean", k, v)
		}
		return b, true, nil
	}
	var useTLS, tlsSet, insecure bool
	for k := range query {
		var err error
		var v string
		switch k {
		case "auth":
			v, _, err = param(k)
			cfg.Auth = AuthMethod(v)
			if err == nil && cfg.Auth != AuthToken && cfg.Auth != AuthJWT {
				err = fmt.Errorf("auth=%q: want token or jwt", v)
			}
		case "token_file":
			cfg.TokenFile, _, err = param(k)
			if err == nil && cfg.TokenFile == "" {
				err = errors.New("empty token_file")
			}
		case "role":
			cfg.Role, _, err = param(k)
		case "jwt_mount":
			cfg.JWTMount, _, err = param(k)
		case "tls":
			useTLS, tlsSet, err = boolean(k)
		case "insecure_http":
			insecure, _, err = boolean(k)
		case "ca_cert":
			cfg.CACert, _, err = param(k)
			if err == nil && cfg.CACert == "" {
				err = errors.New("empty ca_cert")
			}
		case "namespace":
			cfg.Namespace, _, err = param(k)
		case "create":
			cfg.Create, _, err = boolean(k)
		case "timeout":
			v, _, err = param(k)
			if err == nil {
				cfg.Timeout, err = time.ParseDuration(v)
				if err == nil && cfg.Timeout <= 0 {
					err = fmt.Errorf("timeout=%q is not positive", v)
				}
			}
		case "max_attempts":
			v, _, err = param(k)
			if err == nil {
				cfg.MaxAttempts, err = strconv.Atoi(v)
				if err == nil && (cfg.MaxAttempts < 1 || cfg.MaxAttempts > maxAttemptsLimit) {
					err = fmt.Errorf("max_attempts=%d is not between 1 and %d", cfg.MaxAttempts, maxAttemptsLimit)
				}
			}
		default:
			err = fmt.Errorf("unknown parameter %q", k)
		}
		if err != nil {
			return bad("%v", err)
		}
	}
	if insecure && tlsSet && useTLS {
		return bad("tls=1 contradicts insecure_http=1")
	}
	plain := insecure || (tlsSet && !useTLS)

	if u.Host == "" {
		if tlsSet && useTLS {
			return bad("tls=1 needs a host in the URL; with %s its scheme decides", EnvAddr)
		}
		cfg.AllowHTTP = plain
		return cfg, nil
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return bad("empty host")
	}
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return bad("empty port")
		}
		port = DefaultPort
	}
	if !validPort(port) {
		return bad("port must be 1 to 65535")
	}
	scheme := "https"
	if plain || (!tlsSet && isLoopback(host)) {
		scheme = "http"
	}
	cfg.AllowHTTP = plain
	cfg.Address = scheme + "://" + net.JoinHostPort(host, port)
	return cfg, nil
}

// String describes the custodian for messages: address, key and auth.
func (c *Custodian) String() string {
	s := fmt.Sprintf("vault %s %s/keys/%s auth=%s", c.addr, c.mount, c.key, c.auth)
	if c.auth == AuthJWT {
		s += " role=" + c.role
	}
	return s
}

// Close releases the custodian's connections and forgets its Vault tokens.
// Later calls fail with an error wrapping errs.Closed (not a kms sentinel);
// Close itself may be called again and returns nil. Vault tokens obtained
// by JWT login are not revoked: they expire with their TTL.
func (c *Custodian) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.mu.Lock()
	c.static = ""
	clear(c.tokens)
	c.mu.Unlock()
	c.transport.CloseIdleConnections()
	return nil
}

func (c *Custodian) closedError(op string) error {
	return fmt.Errorf("vault: %s: custodian for %s/keys/%s is closed: %w", op, c.mount, c.key, errs.Closed)
}

// usable reports why the custodian may not be used any more, if it may
// not: it is closed, or it destroyed its key.
func (c *Custodian) usable(op string) error {
	if c.closed.Load() {
		return c.closedError(op)
	}
	if c.destroyed.Load() {
		return fmt.Errorf("%w: vault: %s: this custodian destroyed the Transit key %s/keys/%s at %s; it wraps and unwraps nothing more, even if a key of that name exists again",
			kms.ErrUnknownKey, op, c.mount, c.key, c.addr)
	}
	return nil
}
