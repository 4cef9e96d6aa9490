package gcpkms

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/kms"
)

// TestContractBreakingResponsesAreTyped: a response that breaks the API's
// contract (not a gRPC status: another key's version, an empty ciphertext)
// fails with kms.ErrUnavailable, once, not with an untyped error.
func TestContractBreakingResponsesAreTyped(t *testing.T) {
	out := classify(opWrap, errors.New("gcpkms: Cloud KMS returned something else"))
	require.Equal(t, kms.ErrUnavailable, out.sentinel)
	require.False(t, out.retry)

	k := keyName{full: "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"}
	for _, name := range []string{
		"projects/p/locations/europe-west1/keyRings/r/cryptoKeys/other/cryptoKeyVersions/1",
		k.full + "/cryptoKeyVersions/0",
		k.full + "/cryptoKeyVersions/x",
	} {
		_, err := k.versionOf(name)
		require.ErrorIs(t, err, kms.ErrUnavailable, name)
	}
	c := &Custodian{key: k}
	_, err := k.versionOf("elsewhere")
	err = c.failure(opWrap, classify(opWrap, err), err, 1, "")
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.Equal(t, 1, strings.Count(err.Error(), kms.ErrUnavailable.Error()), "the sentinel is named once: %v", err)
}
