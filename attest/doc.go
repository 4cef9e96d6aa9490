// Package attest turns attestation evidence into a verified caller location.
//
// Custody in zonekey is decided by where the caller runs: a record of an EU
// subject must not be readable by a process that cannot prove it runs in the
// EU. This package is where that proof is checked. The keystore asks it on
// every key access; the custodians see the same evidence when a zone key is
// unwrapped and check it again on their own.
//
// # Use
//
// Most programs need three values:
//
//	v, err := attest.NewVerifier(attest.IssuerConfig{
//		Issuer:     "https://accounts.google.com",
//		Audiences:  []string{"https://zonekey.example.com"},
//		JWKSURL:    "https://www.googleapis.com/oauth2/v3/certs",
//		Algorithms: []string{"RS256"},
//		Profile:    attest.GCPProfileForProjects("zonekey-prod"),
//	})
//	src := &attest.GCPMetadataSource{Audience: "https://zonekey.example.com"}
//	a := attest.NewAttestor(src, v)
//	loc, token, err := a.Current(ctx) // loc.Region == "europe-west1"
//
// A [Source] yields this process's current evidence (a token file projected
// by the platform, the GCP metadata server, a fixed token); a [Verifier]
// checks evidence against the issuers it trusts and maps its claims to a
// [Location] through a [Profile]; an [Attestor] binds the two and caches the
// result, so that the hot path is an atomic load and a time comparison.
// [DevIssuer] is a local issuer for development and tests.
//
// # Trust model
//
// The evidence is a JWT signed by an attestation issuer: the cloud platform
// (a GCP instance identity token names the VM's zone), a workload identity
// system (a SPIFFE JWT-SVID whose claims carry the region), or, for
// development only, a [DevIssuer]. The issuers are the root of trust: each is
// configured explicitly, by its exact iss, the audiences this deployment
// accepts, the algorithms it signs with, and where its public keys (JWKS)
// come from. The [Profile] decides which claims make a location, and
// may narrow whom the issuer vouches for: Google signs identity tokens for
// any VM of any project, so a GCP deployment must name its projects
// ([GCPProfileForProjects]). Nothing in a token chooses its own trust: a token's iss only
// selects among configured issuers, and its signature must then verify under
// a key, named by kid, that this issuer published, of the type its alg
// requires. Symmetric algorithms and "none" are refused outright, so a
// public key can never be used as an HMAC secret.
//
// What a verified [Location] proves: that the issuer vouched, until the
// token's exp, for the placement (region, zone) and identity (workload) of
// the workload the token was minted for, and that the token was meant for
// this deployment (aud). What it does not prove: that the process presenting
// the token is that workload. A token is a bearer credential; a stolen token
// can be replayed from anywhere until it expires. Keep token lifetimes short
// (minutes; GCP identity tokens last one hour, which is the upper end), keep
// the audience specific to zonekey so tokens minted for other services are
// useless here, protect token files like keys, and let the custodian check
// the evidence again (it sees the same token and is the last line of
// defence). [IssuerConfig.MaxLifetime] refuses tokens that live too long.
//
// Verified tokens are cached until their exp, and a token is never valid
// past its exp. A key removed from an issuer's JWKS stops verifying at the
// next successful load of the JWKS (which also drops the cached
// verifications made under it), within an hour: a set older than that is
// loaded again, and a cached token, or an Attestor's evidence, whose key
// was last found in a set that old has its key looked up again. A JWKS
// that holds no usable key withdraws all of its issuer's keys. While the
// JWKS cannot be loaded, the keys already loaded keep verifying, up to
// [IssuerConfig.MaxStale] if set.
// Clock skew is tolerated for nbf and iat (up to [IssuerConfig.MaxSkew]); exp
// is enforced without leeway, so skew never lengthens a token's life.
//
// Every rejection wraps [ErrAttestation] and says what failed; errors never
// contain the token.
package attest

import "github.com/zonekey/zonekey/internal/errs"

// ErrAttestation is wrapped by every error of this package: evidence that is
// missing, malformed, expired, not yet valid, signed by an unknown key or an
// untrusted issuer, meant for another audience, or whose claims do not name a
// location; a Source that cannot obtain the evidence; an invalid issuer
// configuration. A caller that receives it from Verify or Attestor.Current
// must treat its location as unknown and refuse access to every zone's keys.
// Retrying with the same token cannot succeed; fresh evidence from the
// Source, or a Source that recovers, may. It is the same value as
// zonekey.ErrAttestation.
var ErrAttestation = errs.Attestation
