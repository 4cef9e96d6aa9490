package attest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// A Source yields the current attestation evidence of this process: a token
// for a Verifier. Implementations must be safe for concurrent use, and
// should return the same string as long as the evidence has not changed
// (the Attestor re-verifies only when it changes). Errors should wrap
// ErrAttestation: a process that cannot obtain its evidence cannot prove its
// location.
type Source interface {
	Token(ctx context.Context) (string, error)
}

// maxSourceBytes bounds a token read from a file or the metadata server.
const maxSourceBytes = 64 << 10

// StaticSource returns a Source that always yields token (after trimming
// surrounding whitespace); an empty token is an error.
func StaticSource(token string) Source { return staticSource(strings.TrimSpace(token)) }

type staticSource string

func (s staticSource) Token(context.Context) (string, error) {
	if s == "" {
		return "", failf("static attestation token is empty")
	}
	return string(s), nil
}

// FileSource returns a Source that reads the token from the file at path,
// such as a Kubernetes projected service-account token or a SPIFFE helper's
// JWT-SVID file, trimming surrounding whitespace; an empty or missing file
// is an error.
//
// The file is re-read when it changes: each call stats path (following
// symlinks, so the atomic "..data" symlink swap of Kubernetes volumes and a
// rename over the file are both seen) and re-reads it if its inode, size or
// modification time differ from the last read. A file modified within two
// seconds before it was read is re-read on every call until that window has
// passed, so a rewrite within the file system's timestamp granularity is not
// missed. A stat per call is cheap next to the Attestor's once-per-second
// use.
func FileSource(path string) Source { return &fileSource{path: path} }

type fileSource struct {
	path string

	mu     sync.Mutex
	token  string
	info   os.FileInfo // of the file token was read from
	readAt time.Time
}

// racyWindow is how recently before a read a file may have been modified
// for its mtime to be an unreliable witness of later changes.
const racyWindow = 2 * time.Second

func (s *fileSource) Token(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(s.path)
	if err != nil {
		return "", fmt.Errorf("%w: reading the attestation token: %w", ErrAttestation, err)
	}
	if s.info != nil && os.SameFile(s.info, fi) && fi.Size() == s.info.Size() &&
		fi.ModTime().Equal(s.info.ModTime()) && s.readAt.Sub(fi.ModTime()) > racyWindow {
		return s.token, nil
	}
	readAt := time.Now()
	f, err := os.Open(s.path)
	if err != nil {
		return "", fmt.Errorf("%w: reading the attestation token: %w", ErrAttestation, err)
	}
	defer f.Close()
	// Stat the file that is read, not the path: the path may have been
	// swapped since the stat above.
	if fi, err = f.Stat(); err != nil {
		return "", fmt.Errorf("%w: reading the attestation token: %w", ErrAttestation, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSourceBytes+1))
	if err != nil {
		return "", fmt.Errorf("%w: reading the attestation token: %w", ErrAttestation, err)
	}
	if len(data) > maxSourceBytes {
		return "", failf("attestation token file %s is larger than %d bytes", s.path, maxSourceBytes)
	}
	tok := string(bytes.TrimSpace(data))
	if tok == "" {
		return "", failf("attestation token file %s is empty", s.path)
	}
	s.token, s.info, s.readAt = tok, fi, readAt
	return tok, nil
}

// GCPMetadataSource fetches a GCP instance identity token from the metadata
// server: GET {BaseURL}/computeMetadata/v1/instance/service-accounts/default/identity
// with audience=Audience and format=full (so the token carries
// google.compute_engine.zone, which GCPProfile reads) and the header
// Metadata-Flavor: Google. A response without that header is refused: it
// did not come from the metadata server. The token is cached until five
// minutes before its exp (half its lifetime, for short-lived tokens).
//
// Set the fields before the first Token call. It is safe for concurrent use.
type GCPMetadataSource struct {
	// Audience is the aud the token is minted for; it must be one of the
	// Verifier's Audiences for the GCP issuer. Required.
	Audience string
	// BaseURL of the metadata server; default http://metadata.google.internal.
	BaseURL string
	// HTTPClient makes the request; default a client with a 5s timeout that
	// uses no proxy and follows no redirect.
	HTTPClient *http.Client

	now func() time.Time // the clock; nil means time.Now

	mu      sync.Mutex
	token   string
	renewAt time.Time
}

// DefaultMetadataURL is the metadata server's address inside GCP.
const DefaultMetadataURL = "http://metadata.google.internal"

const metadataIdentityPath = "/computeMetadata/v1/instance/service-accounts/default/identity"

// renewBefore is how long before its exp a cached metadata token is renewed.
const renewBefore = 5 * time.Minute

// maxMetadataCache bounds how long a metadata token is cached, whatever its
// exp says: Google's identity tokens live an hour, and the exp read here is
// not verified yet, so a response that claims a later one (a spoofed or
// broken metadata server) must not pin its token, which the Verifier may
// refuse, until the process restarts.
const maxMetadataCache = time.Hour

var defaultMetadataClient = &http.Client{
	Timeout: 5 * time.Second,
	// The metadata server is link-local: never through a proxy.
	Transport: &http.Transport{Proxy: nil},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return errors.New("the metadata server does not redirect")
	},
}

// Token returns the cached identity token, fetching a new one when none is
// cached or the cached one is close to its exp (or was fetched 55 minutes
// ago: its exp is not verified here, so a far one is not trusted).
func (s *GCPMetadataSource) Token(ctx context.Context) (string, error) {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token != "" && now().Before(s.renewAt) {
		return s.token, nil
	}
	tok, err := s.fetch(ctx)
	if err != nil {
		return "", fmt.Errorf("%w: GCP metadata identity token: %w", ErrAttestation, err)
	}
	iat, exp, err := unverifiedTimes(tok)
	if err != nil {
		return "", failf("GCP metadata identity token: %v", err)
	}
	margin := renewBefore
	if life := exp.Sub(iat); iat.Before(exp) && life/2 < margin {
		margin = life / 2
	}
	s.token, s.renewAt = tok, exp.Add(-margin)
	if limit := now().Add(maxMetadataCache - renewBefore); limit.Before(s.renewAt) {
		s.renewAt = limit
	}
	return tok, nil
}

func (s *GCPMetadataSource) fetch(ctx context.Context) (string, error) {
	if s.Audience == "" {
		return "", errors.New("GCPMetadataSource.Audience is empty")
	}
	base := s.BaseURL
	if base == "" {
		base = DefaultMetadataURL
	}
	client := s.HTTPClient
	if client == nil {
		client = defaultMetadataClient
	}
	q := url.Values{"audience": {s.Audience}, "format": {"full"}}
	u := strings.TrimSuffix(base, "/") + metadataIdentityPath + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.Header.Get("Metadata-Flavor") != "Google" {
		return "", errors.New("response lacks the header Metadata-Flavor: Google; not the metadata server")
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("metadata server answered %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxSourceBytes+1))
	if err != nil {
		return "", err
	}
	if len(data) > maxSourceBytes {
		return "", fmt.Errorf("response is larger than %d bytes", maxSourceBytes)
	}
	tok := string(bytes.TrimSpace(data))
	if tok == "" {
		return "", errors.New("empty response")
	}
	return tok, nil
}

// unverifiedTimes reads iat and exp from a token without verifying it, to
// schedule its renewal; it is never used to trust anything.
func unverifiedTimes(tok string) (iat, exp time.Time, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return iat, exp, errors.New("not a compact JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return iat, exp, errors.New("malformed JWT payload")
	}
	var c struct {
		Iat *float64 `json:"iat"`
		Exp *float64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil || c.Exp == nil {
		return iat, exp, errors.New("JWT payload has no numeric exp")
	}
	exp = time.Unix(int64(*c.Exp), 0)
	if c.Iat != nil {
		iat = time.Unix(int64(*c.Iat), 0)
	}
	return iat, exp, nil
}
