package envelope_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
)

func TestOpenFunc(t *testing.T) {
	k, err := envelope.NewKey(envelope.NewKeyID(), make([]byte, envelope.KeySize))
	require.NoError(t, err)
	other, err := envelope.NewKey(envelope.NewKeyID(), make([]byte, envelope.KeySize))
	require.NoError(t, err)
	b := envelope.Binding{Path: "Email", Subject: "s-1"}
	s, err := k.SealString("alice@example.com", b)
	require.NoError(t, err)

	var asked []envelope.KeyID
	lookup := func(id envelope.KeyID) (*envelope.Key, error) {
		asked = append(asked, id)
		return k, nil
	}
	got, err := envelope.OpenStringFunc(s, b, lookup)
	require.NoError(t, err)
	require.Equal(t, "alice@example.com", got)
	require.Equal(t, []envelope.KeyID{k.ID()}, asked, "the key is looked up once, by the header's id")
	gotB, err := envelope.OpenBytesFunc([]byte(s), b, lookup)
	require.NoError(t, err)
	require.Equal(t, []byte("alice@example.com"), gotB)

	// The lookup's error comes back as it is.
	boom := errors.New("custodian down")
	_, err = envelope.OpenStringFunc(s, b, func(envelope.KeyID) (*envelope.Key, error) { return nil, boom })
	require.ErrorIs(t, err, boom)

	// A key with another id is refused, not tried.
	_, err = envelope.OpenStringFunc(s, b, func(envelope.KeyID) (*envelope.Key, error) { return other, nil })
	require.ErrorIs(t, err, envelope.ErrUnknownKey)

	// Binding, tampering and malformed input fail as with OpenString, and
	// the key is not looked up for input that does not decode.
	_, err = envelope.OpenStringFunc(s, envelope.Binding{Path: "Phone", Subject: "s-1"}, lookup)
	require.ErrorIs(t, err, envelope.ErrTampered)
	flipped := []byte(s)
	flipped[len(flipped)-5] ^= 'A' ^ 'B'
	_, err = envelope.OpenStringFunc(string(flipped), b, lookup)
	require.Error(t, err)
	asked = nil
	for _, bad := range []string{"", "zk1.", "zk1.!!!!", "plain", s[:len(s)-3], s + "\n"} {
		_, err = envelope.OpenStringFunc(bad, b, lookup)
		require.ErrorIs(t, err, envelope.ErrFormat, "%q", bad)
	}
	require.Empty(t, asked)
}
