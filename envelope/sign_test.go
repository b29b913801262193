package envelope_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
)

const testToken = "s3cret-publisher-token"

// TestSignerRoundTrip proves, on both tracks, that what a signing codec writes a verifying
// codec with the same token accepts, and that a wrong token, a missing signature or a
// tampered payload is rejected as ErrUnauthenticated (poison, reason "unauthenticated").
func TestSignerRoundTrip(t *testing.T) {
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		t.Run(string(track), func(t *testing.T) {
			signer := envelope.NewSigner(testToken)
			require.NotNil(t, signer)
			signing := &envelope.Codec{Track: track, Signer: signer}
			e := newFeedback()
			headers := e.Meta.Headers
			b, err := signing.Encode(e)
			require.NoError(t, err)
			require.Len(t, e.Meta.Headers[envelope.SignatureHeader], 64, "hex HMAC-SHA256")
			require.NotContains(t, headers, envelope.SignatureHeader, "the caller's header map is not written to")

			got, err := signing.Decode(b)
			require.NoError(t, err)
			require.Equal(t, e.Meta.Headers[envelope.SignatureHeader], got.Header(envelope.SignatureHeader))
			require.Equal(t, "high_watermark", got.Header("reason"))

			// A reader without a token does not check.
			_, err = (&envelope.Codec{}).Decode(b)
			require.NoError(t, err)

			unauthenticated := func(t *testing.T, c *envelope.Codec, body []byte, detail string) {
				t.Helper()
				_, err := c.Decode(body)
				require.ErrorIs(t, err, envelope.ErrUnauthenticated)
				require.ErrorIs(t, err, envelope.ErrPoison)
				require.Equal(t, "unauthenticated", envelope.Reason(err))
				require.ErrorContains(t, err, detail)
			}
			unauthenticated(t, &envelope.Codec{Signer: envelope.NewSigner("another-token")}, b, "does not match")

			unsigned, err := (&envelope.Codec{Track: track}).Encode(newFeedback())
			require.NoError(t, err)
			unauthenticated(t, signing, unsigned, `no "signature" header`)

			// Tampering the payload (v1 hashes are informational, so only the signature can
			// catch it there; on v2 the hash is recomputed too, as a forger would).
			tampered := retamper(t, track, b, `hard`, `soft`)
			unauthenticated(t, signing, tampered, "does not match")

			// Tampering the key or schema_id also breaks the signature.
			unauthenticated(t, signing, []byte(strings.Replace(string(b), `"coord-1"`, `"coord-2"`, 1)), "does not match")

			notHex := []byte(strings.Replace(string(b), e.Meta.Headers[envelope.SignatureHeader], "zz", 1))
			unauthenticated(t, signing, notHex, "not hex")
		})
	}
}

// retamper replaces old by new in the payload and, on v2, fixes up meta.hash as a forger
// would, so that only the signature can tell.
func retamper(t *testing.T, track envelope.Track, b []byte, old, new string) []byte {
	t.Helper()
	e, err := (&envelope.Codec{}).Decode(b)
	require.NoError(t, err)
	e.Payload = json.RawMessage(strings.Replace(string(e.Payload), old, new, 1))
	sig := e.Meta.Headers[envelope.SignatureHeader]
	out, err := (&envelope.Codec{Track: track}).Encode(e)
	require.NoError(t, err)
	require.Equal(t, sig, e.Meta.Headers[envelope.SignatureHeader], "the old signature is carried over")
	return out
}

// TestNewSignerOff proves PUBLISHER_TOKEN "" and "unset" mean signing off.
func TestNewSignerOff(t *testing.T) {
	require.Nil(t, envelope.NewSigner(""))
	require.Nil(t, envelope.NewSigner("unset"))
	require.NotNil(t, envelope.NewSigner("Unset"), "only the exact word is special")
	require.True(t, envelope.NewSigner("a").Equal(envelope.NewSigner("a")))
	require.False(t, envelope.NewSigner("a").Equal(envelope.NewSigner("b")))
	require.False(t, envelope.NewSigner("a").Equal(nil))
	var none *envelope.Signer
	require.True(t, none.Equal(nil))
}

// Signature test vectors, computed by hand with python3 and nothing but hmac/hashlib from the
// canonical form documented on envelope.Signer (envelope/testdata/signature_vectors.py holds
// the script). They prove the README's description is enough to sign in another language.
const (
	vectorV2Signature = "bcbe0b739fcfe5a5833345ccee1e88ad74072b04d307430c0753a26722a92e9e"
	vectorV1Signature = "e9e945bce88019746522dbf7751f8e39ae1113d340ca672d55549ce4040fb4ff"
	vectorPayload     = `{"coordinator_id":"café-1","queue_size":82,"capacity":100,"level":"hard","source":"store","ts":1729263600.1}`
)

// TestSignatureVectors proves Encode signs exactly as the documented canonical form says (the
// Python-computed vectors), on v2 (raw UTF-8 payload, id) and on v1 (escaped payload, null key,
// no id), and that Decode accepts those signatures.
func TestSignatureVectors(t *testing.T) {
	for _, tc := range []struct {
		track envelope.Track
		id    string
		key   *string
		want  string
	}{
		{envelope.TrackV2, "01JAB0000000000000000000V2", ptr("café-1"), vectorV2Signature},
		{envelope.TrackV1, "set-but-not-sent-on-v1", nil, vectorV1Signature},
	} {
		t.Run(string(tc.track), func(t *testing.T) {
			c := &envelope.Codec{Track: tc.track, Signer: envelope.NewSigner(testToken)}
			e := &envelope.Envelope{
				ID:      tc.id,
				TS:      1729263600.123,
				Key:     tc.key,
				Meta:    envelope.Meta{SchemaID: "telemetry.FeedbackEvent"},
				Payload: json.RawMessage(vectorPayload),
			}
			b, err := c.Encode(e)
			require.NoError(t, err)
			require.Equal(t, tc.want, e.Meta.Headers[envelope.SignatureHeader])
			got, err := c.Decode(b)
			require.NoError(t, err)
			require.Equal(t, tc.want, got.Header(envelope.SignatureHeader))
		})
	}
}

// TestSignatureVectorFromWire proves a message signed elsewhere — written by hand the way a
// Python producer would, with json.dumps spacing — verifies: the payload line is the wire text
// with whitespace outside strings removed, escapes kept.
func TestSignatureVectorFromWire(t *testing.T) {
	body := `{"ts": 1729263600.123, "key": null, "meta": {"schema_id": "telemetry.FeedbackEvent", "track": "v1", ` +
		`"headers": {"signature": "` + vectorV1Signature + `"}, "hash": "ignored on v1"}, ` +
		`"payload": {"coordinator_id": "caf\u00e9-1", "queue_size": 82, "capacity": 100, "level": "hard", "source": "store", "ts": 1729263600.1}}`
	c := &envelope.Codec{Signer: envelope.NewSigner(testToken), Schemas: testSchemas()}
	e, err := c.Decode([]byte(body))
	require.NoError(t, err)
	var ev feedbackEvent
	require.NoError(t, json.Unmarshal(e.Payload, &ev))
	require.Equal(t, "café-1", ev.CoordinatorID)

	_, err = c.Decode([]byte(strings.Replace(body, `"level": "hard"`, `"level": "soft"`, 1)))
	require.ErrorIs(t, err, envelope.ErrUnauthenticated)
}

// TestSignedDoubleWrapped proves a signed inner envelope verifies after unwrapping, and an
// unsigned one does not.
func TestSignedDoubleWrapped(t *testing.T) {
	signer := envelope.NewSigner(testToken)
	inner, err := (&envelope.Codec{Signer: signer}).Encode(newFeedback())
	require.NoError(t, err)
	wrap := func(inner []byte) []byte {
		b, err := (&envelope.Codec{}).Encode(&envelope.Envelope{
			TS: 1, Meta: envelope.Meta{SchemaID: envelope.WrappedSchemaID}, Payload: inner,
		})
		require.NoError(t, err)
		return b
	}
	e, err := (&envelope.Codec{Signer: signer}).Decode(wrap(inner))
	require.NoError(t, err)
	require.Equal(t, "telemetry.FeedbackEvent", e.Meta.SchemaID)

	plain, err := (&envelope.Codec{}).Encode(newFeedback())
	require.NoError(t, err)
	_, err = (&envelope.Codec{Signer: signer}).Decode(wrap(plain))
	require.ErrorIs(t, err, envelope.ErrUnauthenticated)
}

// TestSignerConcurrent proves one signing Codec is safe for concurrent Encode and Decode
// (under -race) and that every signature made concurrently verifies.
func TestSignerConcurrent(t *testing.T) {
	c := &envelope.Codec{Track: envelope.TrackV2, Signer: envelope.NewSigner(testToken)}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 200 {
				b, err := c.Encode(newFeedback())
				if err == nil {
					_, err = c.Decode(b)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		require.NoError(t, <-errs)
	}
}
