package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/zonekey/zonekey/kms"
)

// retryMode says which failures of a request may be retried.
type retryMode int

const (
	// retryTransient retries every transient failure: for requests that
	// can be repeated without harm (encrypt, decrypt, reads, settings).
	retryTransient retryMode = iota
	// retryUnsent retries only failures after which the request cannot
	// have been processed: for requests that must not run twice (rotate).
	retryUnsent
)

// vaultError is a failed request, classified. It wraps its kms sentinel.
type vaultError struct {
	class  error  // a kms sentinel
	op     string // what the driver was doing
	status int    // HTTP status, 0 for transport errors
	detail string // Vault's message or the transport error; never a secret

	transient bool // retrying may help
	unsent    bool // the request cannot have been processed
}

func (e *vaultError) Error() string {
	if e.status != 0 {
		return fmt.Sprintf("%v: vault: %s: HTTP %d: %s", e.class, e.op, e.status, e.detail)
	}
	return fmt.Sprintf("%v: vault: %s: %s", e.class, e.op, e.detail)
}

func (e *vaultError) Unwrap() error { return e.class }

// isForbidden reports whether err is Vault's 403 for a request (as opposed
// to a refused login or a missing attestation).
func isForbidden(err error) bool {
	var ve *vaultError
	return errors.As(err, &ve) && ve.status == http.StatusForbidden
}

// response is a successful answer of Vault.
type response struct {
	status int
	body   []byte // the JSON body; the caller clears it when done
}

// send makes one request to Vault with token, retrying transient failures
// as mode allows, at most c.attempts times and within ctx. A 4xx answer is
// returned at once as a *vaultError; its body, when Vault sent JSON, is
// returned too (batch results come with a 400 when every item failed).
func (c *Custodian) send(ctx context.Context, op, token, method, path string, body any, mode retryMode) (*response, error) {
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("vault: %s: encoding the request: %w", op, err)
		}
		defer clear(data)
	}
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		resp, err := c.attempt(ctx, op, token, method, path, data)
		if err == nil {
			return resp, nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			// The context ended during the attempt: report that,
			// with what the attempt saw.
			if errors.Is(err, ctxErr) {
				return nil, fmt.Errorf("vault: %s: %w", op, ctxErr)
			}
			return resp, fmt.Errorf("vault: %s: %w (%w)", op, ctxErr, err)
		}
		var ve *vaultError
		if !errors.As(err, &ve) || !ve.transient || (mode == retryUnsent && !ve.unsent) || attempt >= c.attempts {
			if attempt > 1 && ve != nil && ve.transient {
				ve.detail += fmt.Sprintf(" (after %d attempts)", attempt)
			}
			return resp, err
		}
		timer := time.NewTimer(backoff(attempt))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("vault: %s: %w while retrying (%w)", op, ctx.Err(), err)
		case <-timer.C:
		}
	}
}

// backoff returns the wait after the given failed attempt: exponential from
// backoffBase, capped at backoffMax, with jitter over its upper half.
func backoff(attempt int) time.Duration {
	d := backoffBase << (attempt - 1)
	if d > backoffMax || d <= 0 {
		d = backoffMax
	}
	return d/2 + rand.N(d/2+1)
}

// attempt makes one request. On failure it returns a *vaultError, or the
// context's error, and for a 4xx with a JSON body also the response.
func (c *Custodian) attempt(ctx context.Context, op, token, method, path string, data []byte) (*response, error) {
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cl := c.client.WithRequestCallbacks(func(r *api.Request) { r.ClientToken = token })
	var (
		resp *api.Response
		err  error
	)
	switch method {
	case http.MethodGet:
		resp, err = cl.Logical().ReadRawWithContext(actx, path)
	case http.MethodDelete:
		// The client has no raw delete; Vault answers a delete with 204
		// and no body, or with an error.
		_, err = cl.Logical().DeleteWithContext(actx, path)
		if err == nil {
			return &response{status: http.StatusNoContent}, nil
		}
	default:
		resp, err = cl.Logical().WriteRawWithContext(actx, path, data)
	}
	var body []byte
	if resp != nil && resp.Body != nil {
		var readErr error
		body, readErr = io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
		resp.Body.Close()
		if err == nil && readErr != nil {
			err = readErr
		}
		if len(body) > maxBody {
			clear(body)
			return nil, &vaultError{class: kms.ErrUnavailable, op: op, status: resp.StatusCode,
				detail: fmt.Sprintf("response larger than %d bytes", maxBody)}
		}
	}
	if err == nil {
		return &response{status: resp.StatusCode, body: body}, nil
	}
	if ctx.Err() != nil {
		clear(body)
		return nil, ctx.Err()
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		ve := classifyStatus(op, re.StatusCode, re.Errors, re.RawError)
		if ve.status >= 400 && ve.status < 500 && json.Valid(body) {
			return &response{status: re.StatusCode, body: body}, ve
		}
		clear(body)
		return nil, ve
	}
	clear(body)
	if actx.Err() != nil {
		return nil, &vaultError{class: kms.ErrUnavailable, op: op, transient: true,
			detail: fmt.Sprintf("no answer within %v", c.timeout)}
	}
	return nil, classifyTransport(op, err)
}

// classifyTransport classifies an error below HTTP: certificate problems are
// configuration errors, everything else (refused, reset, EOF, DNS) makes
// the custodian unavailable.
func classifyTransport(op string, err error) *vaultError {
	var (
		unknownCA  x509.UnknownAuthorityError
		hostname   x509.HostnameError
		invalid    x509.CertificateInvalidError
		verify     *tls.CertificateVerificationError
		recordHdr  tls.RecordHeaderError
		opErr      *net.OpError
		dnsErr     *net.DNSError
		notPrinted = err.Error()
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		return &vaultError{class: kms.ErrConfig, op: op, detail: "TLS: " + notPrinted}
	case errors.As(err, &recordHdr), strings.Contains(notPrinted, "server gave HTTP response to HTTPS client"):
		return &vaultError{class: kms.ErrConfig, op: op, detail: "TLS to a server that does not speak it (is the address http?): " + notPrinted}
	}
	ve := &vaultError{class: kms.ErrUnavailable, op: op, transient: true, detail: notPrinted}
	if errors.As(err, &opErr) && opErr.Op == "dial" || errors.As(err, &dnsErr) {
		ve.unsent = true
	}
	return ve
}

// Vault's messages (Vault 1.21) that decide the class of a 400.
var (
	tamperedMessages = []string{
		"message authentication failed",
		"invalid ciphertext",
		"could not decode base64",
		"illegal base64",
	}
	unknownKeyMessages = []string{
		"encryption key not found",
		"key not found",
		"too old",
		"version is too new",
		"no existing key named",
		"could not find key",
		"could not delete key; not found",
	}
)

// classifyStatus classifies an HTTP error answer of Vault.
func classifyStatus(op string, status int, messages []string, raw bool) *vaultError {
	detail := summarize(messages, raw)
	ve := &vaultError{op: op, status: status, detail: detail}
	lower := strings.ToLower(detail)
	switch {
	case status == http.StatusForbidden:
		ve.class = kms.ErrDenied
	case status == http.StatusTooManyRequests:
		ve.class, ve.transient, ve.unsent = kms.ErrUnavailable, true, true
	case status == http.StatusServiceUnavailable:
		// Sealed, or a standby that cannot serve: nothing was done.
		ve.class, ve.transient, ve.unsent = kms.ErrUnavailable, true, true
	case status >= 500:
		ve.class, ve.transient = kms.ErrUnavailable, true
	case status == http.StatusNotFound:
		ve.class = kms.ErrUnknownKey
	case status == http.StatusPreconditionFailed:
		// A performance standby not yet at the required state.
		ve.class, ve.transient, ve.unsent = kms.ErrUnavailable, true, true
	case containsAny(lower, unknownKeyMessages):
		ve.class = kms.ErrUnknownKey
	case containsAny(lower, tamperedMessages):
		ve.class = kms.ErrTampered
	default:
		ve.class = kms.ErrConfig
	}
	return ve
}

// classifyItem classifies the error of one item of a batch answer.
func classifyItem(op, message string) error {
	return classifyStatus(op, http.StatusBadRequest, []string{message}, false)
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// summarize joins Vault's error messages, bounded, on one line.
func summarize(messages []string, raw bool) string {
	const max = 300
	var s string
	if raw {
		s = "non-JSON answer"
		if len(messages) > 0 && strings.TrimSpace(messages[0]) != "" {
			s += ": " + messages[0]
		}
	} else {
		s = strings.Join(messages, "; ")
	}
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max] + "..."
	}
	if s == "" {
		s = "no message"
	}
	return s
}
