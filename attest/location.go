package attest

import (
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Location is what verified evidence says about the caller.
type Location struct {
	// Region is the cloud region the issuer placed the workload in, e.g.
	// "europe-west1". Custody policies match on it.
	Region string
	// Zone is the cloud zone if the evidence names one, e.g.
	// "europe-west1-b". It is a placement within Region, not a zonekey
	// custody zone.
	Zone string
	// Issuer is the verified iss of the evidence.
	Issuer string
	// Workload is the workload's identity as the issuer named it: a SPIFFE
	// ID, a service account, an instance id. Empty if the evidence names
	// none.
	Workload string
	// Expiry is the exp of the evidence, in UTC; the Location is not valid from
	// that instant on.
	Expiry time.Time
}

// A Profile maps the verified claims of a token to a Location's Region, Zone
// and Workload; the Verifier fills in Issuer and Expiry itself. Locate is
// called only after the signature, issuer, audience and times have been
// checked. It must fail (with any error; the Verifier wraps it in
// ErrAttestation) when the claims do not name a well-formed location: a
// Profile that guesses turns a malformed token into a custody decision.
// Numbers in claims are float64 and objects map[string]any, as
// encoding/json decodes them. Use [ProfileFunc] to write one as a function.
type Profile interface {
	Locate(claims map[string]any) (Location, error)
}

// ProfileFunc adapts a function to the Profile interface.
type ProfileFunc func(claims map[string]any) (Location, error)

// Locate calls f(claims).
func (f ProfileFunc) Locate(claims map[string]any) (Location, error) { return f(claims) }

// Region and zone names accepted by the built-in profiles: lowercase letters,
// digits and inner hyphens, at most 63 characters, as cloud providers name
// them and as Vault's bound_claims can match them exactly.
var (
	regionRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$`)
	// A GCP zone is its region (words, the last ending in digits) followed
	// by a one-word zone suffix: europe-west1-b, us-central1-a.
	gcpZoneRE = regexp.MustCompile(`^([a-z]+(?:-[a-z]+)*[0-9]+)-[a-z][a-z0-9]{0,7}$`)
)

// GCPProfile reads a GCP instance identity token requested with
// format=full: the claim google.compute_engine.zone ("europe-west1-b") gives
// Zone, and Region is that zone without its last part ("europe-west1").
// Workload is google.compute_engine.instance_id, or sub if the token has no
// instance id. A token without a well-formed zone claim is refused.
//
// Google signs identity tokens for every VM of every project, with whatever
// audience the VM asks for, so GCPProfile alone accepts any GCP VM in the
// right region, including other organisations' VMs. In production use
// [GCPProfileForProjects].
var GCPProfile Profile = ProfileFunc(gcpLocate)

// GCPProfileForProjects is GCPProfile restricted to VMs of the given
// projects: a token whose google.compute_engine.project_id is not one of
// projectIDs is refused. With no project IDs every token is refused.
func GCPProfileForProjects(projectIDs ...string) Profile {
	allowed := make(map[string]bool, len(projectIDs))
	for _, p := range projectIDs {
		allowed[p] = true
	}
	return ProfileFunc(func(claims map[string]any) (Location, error) {
		loc, err := gcpLocate(claims)
		if err != nil {
			return Location{}, err
		}
		// gcpLocate has checked the shape of the google claim.
		gce := claims["google"].(map[string]any)["compute_engine"].(map[string]any)
		project, _ := gce["project_id"].(string)
		if project == "" || !allowed[project] {
			return Location{}, fmt.Errorf("google.compute_engine.project_id %.64q is not an allowed project", project)
		}
		return loc, nil
	})
}

func gcpLocate(claims map[string]any) (Location, error) {
	google, ok := claims["google"].(map[string]any)
	if !ok {
		return Location{}, errors.New("no google claim (was the token requested with format=full?)")
	}
	gce, ok := google["compute_engine"].(map[string]any)
	if !ok {
		return Location{}, errors.New("no google.compute_engine claim")
	}
	zone, ok := gce["zone"].(string)
	if !ok {
		return Location{}, errors.New("google.compute_engine.zone claim is missing or not a string")
	}
	m := gcpZoneRE.FindStringSubmatch(zone)
	if m == nil || len(zone) > 63 {
		return Location{}, fmt.Errorf("google.compute_engine.zone claim %.64q is not a GCP zone", zone)
	}
	loc := Location{Region: m[1], Zone: zone}
	if id, ok := gce["instance_id"].(string); ok && id != "" {
		loc.Workload = id
	} else if sub, ok := claims["sub"].(string); ok {
		loc.Workload = sub
	}
	return loc, nil
}

// RegionClaim returns a Profile that takes Region from the top-level string
// claim of that name (for example "region", as a SPIFFE JWT-SVID issuer or
// the DevIssuer sets it) and Workload from sub. The region must be lowercase
// letters, digits and inner hyphens, at most 63 characters; anything else,
// or a missing claim, is refused. Zone is left empty.
func RegionClaim(claim string) Profile {
	return ProfileFunc(func(claims map[string]any) (Location, error) {
		v, present := claims[claim]
		if !present {
			return Location{}, fmt.Errorf("no %q claim", claim)
		}
		region, ok := v.(string)
		if !ok {
			return Location{}, fmt.Errorf("%q claim is not a string", claim)
		}
		if !regionRE.MatchString(region) {
			return Location{}, fmt.Errorf("%q claim %.64q is not a region name", claim, region)
		}
		loc := Location{Region: region}
		if sub, ok := claims["sub"].(string); ok {
			loc.Workload = sub
		}
		return loc, nil
	})
}
