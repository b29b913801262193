package envelope_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
)

const feedbackPayload = `{"coordinator_id":"coord-1","queue_size":82,"capacity":100,"level":"hard","source":"store","ts":1729263600.1}`

func newFeedback() *envelope.Envelope {
	return &envelope.Envelope{
		Key:     ptr("coord-1"),
		Meta:    envelope.Meta{SchemaID: "telemetry.FeedbackEvent", Headers: map[string]string{"reason": "high_watermark", "utilization": "0.820000"}},
		Payload: json.RawMessage(feedbackPayload),
	}
}

func fixedClock(sec float64) func() time.Time {
	return func() time.Time { return time.Unix(0, int64(sec*1e9)) }
}

// TestV2RoundTrip proves a v2 envelope survives encode → decode whole: id, ts, key, schema,
// headers and payload; and that the hash on the wire is SHA-256 of the payload as sent.
func TestV2RoundTrip(t *testing.T) {
	c := &envelope.Codec{Track: envelope.TrackV2, Schemas: testSchemas(), Now: fixedClock(1729263600.125)}
	e := newFeedback()
	b, err := c.Encode(e)
	require.NoError(t, err)
	require.NotEmpty(t, e.ID, "Encode assigns an id on v2")
	require.Equal(t, 1729263600.125, e.TS, "Encode fills a zero ts from the clock")

	var wire map[string]any
	require.NoError(t, json.Unmarshal(b, &wire))
	require.Equal(t, e.ID, wire["id"])
	sum := sha256.Sum256([]byte(feedbackPayload))
	require.Equal(t, hex.EncodeToString(sum[:]), wire["meta"].(map[string]any)["hash"])
	require.True(t, strings.HasSuffix(string(b), `"payload":`+feedbackPayload+`}`), "compact payload sent as is: %s", b)

	got, err := c.Decode(b)
	require.NoError(t, err)
	require.Equal(t, e.ID, got.ID)
	require.Equal(t, e.TS, got.TS)
	require.Equal(t, ptr("coord-1"), got.Key)
	require.Equal(t, envelope.Meta{
		SchemaID: "telemetry.FeedbackEvent",
		Track:    envelope.TrackV2,
		Headers:  map[string]string{"reason": "high_watermark", "utilization": "0.820000"},
		Hash:     hex.EncodeToString(sum[:]),
	}, got.Meta)
	require.JSONEq(t, feedbackPayload, string(got.Payload))
}

// TestV2IDStable proves that re-encoding the same *Envelope (a publish retry) sends the same
// id and ts, and that distinct envelopes get distinct, increasing ids.
func TestV2IDStable(t *testing.T) {
	c := &envelope.Codec{Track: envelope.TrackV2}
	e := newFeedback()
	first, err := c.Encode(e)
	require.NoError(t, err)
	id := e.ID
	second, err := c.Encode(e)
	require.NoError(t, err)
	require.Equal(t, id, e.ID)
	require.Equal(t, string(first), string(second), "a retry sends identical bytes")

	other := newFeedback()
	_, err = c.Encode(other)
	require.NoError(t, err)
	require.NotEqual(t, id, other.ID)
	require.Less(t, id, other.ID, "ULIDs sort by creation")

	preset := newFeedback()
	preset.ID = "caller-chosen"
	_, err = c.Encode(preset)
	require.NoError(t, err)
	require.Equal(t, "caller-chosen", preset.ID, "an id the caller set is kept")
}

// TestV2PayloadWhitespace proves a v2 payload given with whitespace is sent compact, and the
// hash is over the bytes as sent.
func TestV2PayloadWhitespace(t *testing.T) {
	c := &envelope.Codec{Track: envelope.TrackV2}
	e := newFeedback()
	e.Payload = json.RawMessage("{\n  \"coordinator_id\": \"coord-1\",\n  \"queue_size\": 1, \"capacity\": 2, \"level\": \"ok\"\n}")
	b, err := c.Encode(e)
	require.NoError(t, err)
	got, err := c.Decode(b)
	require.NoError(t, err)
	require.Equal(t, `{"coordinator_id":"coord-1","queue_size":1,"capacity":2,"level":"ok"}`, string(got.Payload))
}

// TestV1Encode proves a v1 envelope is written the Python way (no id, ", " and ": "
// separators, non-ASCII escaped) and that an id the caller set neither goes on the wire nor
// comes back.
func TestV1Encode(t *testing.T) {
	c := &envelope.Codec{Now: fixedClock(1.5)}
	e := newFeedback()
	e.ID = "not-on-v1"
	e.Key = nil
	e.Payload = json.RawMessage(`{"coordinator_id":"café","queue_size":1,"capacity":2,"level":"ok","source":"store","ts":1.0}`)
	b, err := c.Encode(e)
	require.NoError(t, err)
	require.Equal(t, `{"ts": 1.5, "key": null, "meta": {"schema_id": "telemetry.FeedbackEvent", "track": "v1", `+
		`"headers": {"reason": "high_watermark", "utilization": "0.820000"}, "hash": "`+e.Meta.Hash+`"}, `+
		`"payload": {"coordinator_id": "caf\u00e9", "queue_size": 1, "capacity": 2, "level": "ok", "source": "store", "ts": 1.0}}`,
		string(b))
	got, err := c.Decode(b)
	require.NoError(t, err)
	require.Empty(t, got.ID)
	require.Equal(t, e.Meta.Headers, got.Meta.Headers, "v1 writes headers too")
}

// TestV1IgnoresID proves an "id" field in a v1 message is not taken as a producer id (v1 has
// none: the transport id stands in).
func TestV1IgnoresID(t *testing.T) {
	b := []byte(`{"id": "spoofed", "ts": 1.0, "key": null, "meta": {"schema_id": "x", "track": "v1", "headers": {}, "hash": "h"}, "payload": {}}`)
	e, err := (&envelope.Codec{}).Decode(b)
	require.NoError(t, err)
	require.Empty(t, e.ID)
}

// TestUnknownFieldsIgnored proves unknown JSON fields in the envelope and meta are ignored
// (docs/contract.md §2), and that headers may be absent.
func TestUnknownFieldsIgnored(t *testing.T) {
	b := []byte(`{"ts": 2.0, "extra": [1, {"a": null}], "key": "k", "meta": {"schema_id": "x", "track": "v1", "more": true}, "payload": {"z": 1}}`)
	e, err := (&envelope.Codec{}).Decode(b)
	require.NoError(t, err)
	require.Equal(t, "k", e.KeyOf())
	require.Empty(t, e.Meta.Headers)
	require.Equal(t, "", e.Header("absent"))
}

func upperHash(v2 string) string {
	i := strings.Index(v2, `"hash":"`) + len(`"hash":"`)
	return v2[:i] + strings.ToUpper(v2[i:i+64]) + v2[i+64:]
}

// TestDecodeExactFields proves field names are matched exactly after unescaping (as Python's
// json.loads does), a repeated field takes its last value (as a Python dict does), and
// unknown fields of any type are skipped.
func TestDecodeExactFields(t *testing.T) {
	b := []byte(`{"t\u0073":1,"ts":2.5,"Key":"no","key":"k1","key":"k2","meta":{"schema_id":"old"},` +
		`"meta":{"schema_id":"x","track":"v1","headers":{"h":"1","h":"2","n":null},"extra":[true,false,null,-1.5e-3,"\ud83d\ude00"]},` +
		`"payload":{"a":1},"PAYLOAD":{"b":2}}`)
	e, err := (&envelope.Codec{}).Decode(b)
	require.NoError(t, err)
	require.Equal(t, 2.5, e.TS)
	require.Equal(t, "k2", e.KeyOf())
	require.Equal(t, "x", e.Meta.SchemaID)
	require.Equal(t, map[string]string{"h": "2", "n": ""}, e.Meta.Headers)
	require.Equal(t, `{"a":1}`, string(e.Payload))
}

func mustEncodeV2(t *testing.T) []byte {
	t.Helper()
	b, err := (&envelope.Codec{Track: envelope.TrackV2}).Encode(newFeedback())
	require.NoError(t, err)
	return b
}

// TestDecodeErrors proves each kind of bad message gets its sentinel, wraps ErrPoison (so it
// is dead-lettered at once) and maps to its short dead-letter reason.
func TestDecodeErrors(t *testing.T) {
	v2 := string(mustEncodeV2(t))
	for _, tc := range []struct {
		name    string
		body    string
		schemas bool
		want    error
		reason  string
		detail  string
	}{
		{"tampered v2 payload", strings.Replace(v2, `"queue_size":82`, `"queue_size":12`, 1), false, envelope.ErrHashMismatch, "hash_mismatch", "payload hashes to"},
		{"tampered v2 hash", strings.Replace(v2, `"hash":"`, `"hash":"00`, 1), false, envelope.ErrHashMismatch, "hash_mismatch", "meta.hash"},
		{"v2 without id", strings.Replace(v2, `"id":"`, `"idx":"`, 1), false, envelope.ErrMalformed, "malformed", "without id"},
		{"v2 with empty id", `{"id":"","ts":1,"key":null,"meta":{"schema_id":"x","track":"v2","headers":{},"hash":""},"payload":{}}`, false, envelope.ErrMalformed, "malformed", "without id"},
		{"unknown track", strings.Replace(v2, `"track":"v2"`, `"track":"v3"`, 1), false, envelope.ErrUnknownTrack, "unknown_track", `"v3"`},
		{"empty track", `{"ts":1,"key":null,"meta":{"schema_id":"x"},"payload":{}}`, false, envelope.ErrUnknownTrack, "unknown_track", "accepted: v1, v2"},
		{"unknown schema_id", strings.Replace(v2, "telemetry.FeedbackEvent", "telemetry.Nope", 1), true, envelope.ErrUnknownSchema, "unknown_schema", "telemetry.FeedbackEvent, telemetry.RateAdjustment"},
		{"invalid payload", `{"ts":1,"key":null,"meta":{"schema_id":"telemetry.FeedbackEvent","track":"v1"},"payload":{"coordinator_id":"c","queue_size":1,"capacity":1,"level":"panic"}}`, true, envelope.ErrInvalidPayload, "invalid_payload", "accepted: ok, soft, hard"},
		{"payload of wrong field type", `{"ts":1,"key":null,"meta":{"schema_id":"telemetry.FeedbackEvent","track":"v1"},"payload":{"coordinator_id":7}}`, true, envelope.ErrInvalidPayload, "invalid_payload", "telemetry.FeedbackEvent"},
		{"malformed JSON", `{"ts": 1, "key": null, "meta": {`, false, envelope.ErrMalformed, "malformed", ""},
		{"not JSON", `hello`, false, envelope.ErrMalformed, "malformed", ""},
		{"empty", ``, false, envelope.ErrMalformed, "malformed", ""},
		{"JSON array", `[1,2]`, false, envelope.ErrMalformed, "malformed", ""},
		{"JSON null", `null`, false, envelope.ErrMalformed, "malformed", "envelope must be a JSON object"},
		{"JSON string", ` "x" `, false, envelope.ErrMalformed, "malformed", "envelope must be a JSON object"},
		{"field names match exactly", `{"TS":1,"key":null,"Meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", "missing meta"},
		{"data after the envelope", `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{}} {}`, false, envelope.ErrMalformed, "malformed", "data after the envelope"},
		{"byte order mark", "\ufeff" + `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", ""},
		{"ts out of range", `{"ts":1e400,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", "out of range"},
		{"ts null", `{"ts":null,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", "missing ts"},
		{"meta a string", `{"ts":1,"key":null,"meta":"x","payload":{}}`, false, envelope.ErrMalformed, "malformed", "meta must be an object"},
		{"invalid JSON in an unknown field", `{"ts":1,"x":[1,,2],"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", "invalid JSON"},
		{"invalid JSON in the payload", `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{"a":01}}`, false, envelope.ErrMalformed, "malformed", "invalid JSON"},
		{"control character in a string", "{\"ts\":1,\"key\":\"a\nb\",\"meta\":{\"schema_id\":\"x\",\"track\":\"v1\"},\"payload\":{}}", false, envelope.ErrMalformed, "malformed", "control character"},
		{"upper-case v2 hash", upperHash(v2), false, envelope.ErrHashMismatch, "hash_mismatch", ""},
		{"payload array", `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":[1]}`, false, envelope.ErrMalformed, "malformed", "payload must be a JSON object"},
		{"payload string", `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":"{}"}`, false, envelope.ErrMalformed, "malformed", "payload must be a JSON object"},
		{"payload null", `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":null}`, false, envelope.ErrMalformed, "malformed", "payload must be a JSON object"},
		{"payload missing", `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1"}}`, false, envelope.ErrMalformed, "malformed", "payload must be a JSON object"},
		{"missing meta", `{"ts":1,"key":null,"payload":{}}`, false, envelope.ErrMalformed, "malformed", "missing meta"},
		{"meta null", `{"ts":1,"key":null,"meta":null,"payload":{}}`, false, envelope.ErrMalformed, "malformed", "missing meta"},
		{"missing ts", `{"key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", "missing ts"},
		{"ts a string", `{"ts":"1","key":null,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", ""},
		{"key a number", `{"ts":1,"key":5,"meta":{"schema_id":"x","track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", ""},
		{"header not a string", `{"ts":1,"key":null,"meta":{"schema_id":"x","track":"v1","headers":{"a":1}},"payload":{}}`, false, envelope.ErrMalformed, "malformed", ""},
		{"missing schema_id", `{"ts":1,"key":null,"meta":{"track":"v1"},"payload":{}}`, false, envelope.ErrMalformed, "malformed", "missing meta.schema_id"},
		{"bad inner envelope", `{"ts":1,"key":null,"meta":{"schema_id":"events.envelope.EventEnvelope","track":"v1"},"payload":{"ts":1}}`, false, envelope.ErrMalformed, "malformed", "inner envelope: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &envelope.Codec{}
			if tc.schemas {
				c.Schemas = testSchemas()
			}
			e, err := c.Decode([]byte(tc.body))
			require.Nil(t, e)
			require.ErrorIs(t, err, tc.want)
			require.ErrorIs(t, err, envelope.ErrPoison)
			require.Equal(t, tc.reason, envelope.Reason(err))
			require.ErrorContains(t, err, tc.detail)
		})
	}
}

// TestReason proves Reason names every sentinel, sees through wrapping, and is empty for
// errors that are not the codec's.
func TestReason(t *testing.T) {
	for err, want := range map[error]string{
		envelope.ErrMalformed:       "malformed",
		envelope.ErrUnknownTrack:    "unknown_track",
		envelope.ErrUnknownSchema:   "unknown_schema",
		envelope.ErrInvalidPayload:  "invalid_payload",
		envelope.ErrHashMismatch:    "hash_mismatch",
		envelope.ErrUnauthenticated: "unauthenticated",
	} {
		require.Equal(t, want, envelope.Reason(err))
		require.Equal(t, want, envelope.Reason(errors.Join(errors.New("x"), wrap(err))))
		require.ErrorIs(t, err, envelope.ErrPoison)
	}
	require.Equal(t, "", envelope.Reason(errors.New("other")))
	require.Equal(t, "", envelope.Reason(envelope.ErrPoison))
	require.Equal(t, "", envelope.Reason(nil))
}

func wrap(err error) error { return &wrapped{err} }

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "wrapped: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// TestEncodeErrors proves Encode refuses what it cannot send, saying what is wrong, and that
// it validates payloads against the registry as Decode does.
func TestEncodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		codec  envelope.Codec
		mutate func(*envelope.Envelope)
		want   string
		is     error
	}{
		{"empty schema_id", envelope.Codec{}, func(e *envelope.Envelope) { e.Meta.SchemaID = "" }, "empty schema_id", nil},
		{"empty payload", envelope.Codec{}, func(e *envelope.Envelope) { e.Payload = nil }, "empty payload", nil},
		{"payload not JSON", envelope.Codec{}, func(e *envelope.Envelope) { e.Payload = json.RawMessage(`{"a":`) }, "not valid JSON", nil},
		{"payload an array", envelope.Codec{}, func(e *envelope.Envelope) { e.Payload = json.RawMessage(` [1]`) }, "payload must be a JSON object", nil},
		{"payload not JSON v2", envelope.Codec{Track: envelope.TrackV2}, func(e *envelope.Envelope) { e.Payload = json.RawMessage(`{"a":}`) }, "not valid JSON", nil},
		{"unknown track", envelope.Codec{Track: "v9"}, func(*envelope.Envelope) {}, "accepted: v1, v2", nil},
		{"unknown schema", envelope.Codec{Schemas: testSchemas()}, func(e *envelope.Envelope) { e.Meta.SchemaID = "nope" }, "unknown schema_id", envelope.ErrUnknownSchema},
		{"invalid payload", envelope.Codec{Schemas: testSchemas()}, func(e *envelope.Envelope) { e.Payload = json.RawMessage(`{"coordinator_id":""}`) }, "coordinator_id is empty", envelope.ErrInvalidPayload},
		{"NaN ts", envelope.Codec{}, func(e *envelope.Envelope) { e.TS = nan() }, "not a JSON number", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFeedback()
			tc.mutate(e)
			_, err := tc.codec.Encode(e)
			require.ErrorContains(t, err, tc.want)
			require.True(t, strings.HasPrefix(err.Error(), "envelope: "), err.Error())
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
			// AppendEncode fails the same way and leaves what was there untouched.
			prefix := []byte("earlier message")
			out, err := tc.codec.AppendEncode(prefix, e)
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, "earlier message", string(out))
		})
	}
}

// TestAppendEncodeBatch proves a batch is encoded back to back with each message's end
// recorded, that the clock is read once for the envelopes without a TS (and a TS given is
// kept), and that an error names the message and leaves dst and ends as they were.
func TestAppendEncodeBatch(t *testing.T) {
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		t.Run(string(track), func(t *testing.T) {
			readings := 0
			c := envelope.Codec{Track: track, Now: func() time.Time {
				readings++
				return time.Unix(1729263600, 500_000_000)
			}}
			envs := []*envelope.Envelope{newFeedback(), newFeedback(), newFeedback()}
			envs[1].TS = 1700000000.25
			envs[2].Payload = json.RawMessage(`{"coordinator_id":"coord-2"}`)
			buf, ends, err := c.AppendEncodeBatch([]byte("x"), []int{1}, envs)
			require.NoError(t, err)
			require.Equal(t, 1, readings, "one clock reading for the batch")
			require.Len(t, ends, 4)
			for i, e := range envs {
				got, err := c.Decode(buf[ends[i]:ends[i+1]])
				require.NoError(t, err, "message %d", i)
				require.Equal(t, e.TS, got.TS)
				require.Equal(t, e.ID, got.ID)
				alone, err := c.Encode(e) // TS (and v2 id) now set: the same bytes as in the batch
				require.NoError(t, err)
				require.Equal(t, string(alone), string(buf[ends[i]:ends[i+1]]), "message %d", i)
				sum := sha256.Sum256([]byte(`{"coordinator_id":"coord-1","queue_size":82,"capacity":100,"level":"hard","source":"store","ts":1729263600.1}`))
				if i < 2 {
					require.Equal(t, hex.EncodeToString(sum[:]), e.Meta.Hash, "message %d keeps its own hash", i)
				}
			}
			require.NotEqual(t, envs[0].Meta.Hash, envs[2].Meta.Hash)
			require.Equal(t, 1729263600.5, envs[0].TS)
			require.Equal(t, 1700000000.25, envs[1].TS, "a TS given is kept")

			bad := []*envelope.Envelope{newFeedback(), {Meta: envelope.Meta{SchemaID: "s"}}}
			out, ends2, err := c.AppendEncodeBatch(buf, ends, bad)
			require.ErrorContains(t, err, "empty payload (message 1 of 2)")
			require.Equal(t, buf, out)
			require.Equal(t, ends, ends2)
		})
	}
}

// TestAppendEncode proves AppendEncode writes exactly Encode's bytes after dst, on both
// tracks, so the Bus can encode a batch into one buffer.
func TestAppendEncode(t *testing.T) {
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		t.Run(string(track), func(t *testing.T) {
			c := envelope.Codec{Track: track, Now: fixedClock(1729263600.5)}
			e := newFeedback()
			want, err := c.Encode(e) // fills in the v2 id, so the second encoding matches
			require.NoError(t, err)
			buf := []byte("previous bytes|")
			buf, err = c.AppendEncode(buf, e)
			require.NoError(t, err)
			require.Equal(t, "previous bytes|"+string(want), string(buf))
			got, err := c.Decode(buf[len("previous bytes|"):])
			require.NoError(t, err)
			require.JSONEq(t, feedbackPayload, string(got.Payload))
		})
	}
}

func nan() float64 {
	zero := 0.0
	return zero / zero
}

// TestParseTrack proves SCHEMA_TRACK values are validated with the accepted ones named.
func TestParseTrack(t *testing.T) {
	for _, s := range []string{"v1", "v2"} {
		tr, err := envelope.ParseTrack(s)
		require.NoError(t, err)
		require.Equal(t, envelope.Track(s), tr)
	}
	_, err := envelope.ParseTrack("V2")
	require.ErrorContains(t, err, "accepted: v1, v2")
}

// TestSchemas proves the registry: nil accepts everything, Known is sorted, a nil validator
// accepts any payload, Register replaces.
func TestSchemas(t *testing.T) {
	var none *envelope.Schemas
	require.NoError(t, none.Validate("anything", []byte(`{}`)))
	require.Nil(t, none.Known())

	s := envelope.NewSchemas()
	s.Register("b", nil)
	s.Register("a", func([]byte) error { return errString("always") })
	require.Equal(t, []string{"a", "b"}, s.Known())
	require.NoError(t, s.Validate("b", []byte(`{"x":1}`)))
	require.ErrorIs(t, s.Validate("a", []byte(`{}`)), envelope.ErrInvalidPayload)
	s.Register("a", nil)
	require.NoError(t, s.Validate("a", []byte(`{}`)))
	require.ErrorIs(t, s.Validate("c", []byte(`{}`)), envelope.ErrUnknownSchema)
}

// TestDecodeStringsOwnTheirBytes proves that the strings Decode returns (id, key, hash, header
// names and values, including escaped ones) are copies: overwriting the wire bytes afterwards
// changes none of them, and a second decode does not disturb the first one's strings.
func TestDecodeStringsOwnTheirBytes(t *testing.T) {
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		t.Run(string(track), func(t *testing.T) {
			src := newFeedback()
			src.Key = ptr("k\u00e9y-\"1\"")
			src.Meta.Headers = map[string]string{"reason": "high_watermark", "n\u00e4me": "v\nal", "long": strings.Repeat("x", 300)}
			c := &envelope.Codec{Track: track}
			wire, err := c.Encode(src)
			require.NoError(t, err)
			want := string(wire)
			got, err := c.Decode(wire)
			require.NoError(t, err)
			id, key, hash := got.ID, *got.Key, got.Meta.Hash
			headers := map[string]string{}
			for k, v := range got.Meta.Headers {
				headers[strings.Clone(k)] = strings.Clone(v)
			}
			require.Equal(t, *src.Key, key)
			require.Equal(t, src.Meta.Headers, headers)
			for i := range wire {
				wire[i] = '#'
			}
			again, err := c.Decode([]byte(want))
			require.NoError(t, err)
			require.Equal(t, *again.Key, *got.Key)
			require.Equal(t, id, got.ID)
			require.Equal(t, key, *got.Key)
			require.Equal(t, hash, got.Meta.Hash)
			require.Equal(t, headers, got.Meta.Headers)
		})
	}
}

// TestEncodeHeadersSorted proves that Encode writes headers sorted by name in both tracks'
// spacing, with more headers than fit the encoder's stack buffer, and escapes their text.
func TestEncodeHeadersSorted(t *testing.T) {
	names := []string{"m", "b", "z", "a", "k", "c", "y", "d", "x", "e", "w", "f"}
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		t.Run(string(track), func(t *testing.T) {
			e := newFeedback()
			e.Meta.Headers = map[string]string{}
			for i, n := range names {
				e.Meta.Headers[n] = strings.Repeat("v", i) + "\""
			}
			wire, err := (&envelope.Codec{Track: track}).Encode(e)
			require.NoError(t, err)
			sorted := append([]string(nil), names...)
			slices.Sort(sorted)
			sep, colon := ",", ":"
			if track == envelope.TrackV1 {
				sep, colon = ", ", ": "
			}
			var want strings.Builder
			want.WriteString(`"headers"` + colon + "{")
			for i, n := range sorted {
				if i > 0 {
					want.WriteString(sep)
				}
				want.WriteString(`"` + n + `"` + colon + `"` + strings.ReplaceAll(e.Meta.Headers[n], `"`, `\"`) + `"`)
			}
			want.WriteString("}" + sep + `"hash"`)
			require.Contains(t, string(wire), want.String())
		})
	}
}

// TestDecodeImmutableAliasesItsInput: DecodeImmutable reads what Decode reads, with the
// strings the input holds unescaped aliasing it (one allocation fewer per message on the
// consume path) and escaped ones unescaped into memory of their own.
func TestDecodeImmutableAliasesItsInput(t *testing.T) {
	tests := []struct {
		name    string
		wire    string
		aliased func(e *envelope.Envelope) []string // strings that must lie in the input
		copied  func(e *envelope.Envelope) []string // strings that cannot (unescaped)
	}{
		{
			name: "v1 as the Python core writes it",
			wire: `{"ts": 1796409401.7271798, "key": "bars_1", "meta": {"schema_id": "bench.m", "track": "v1", "headers": {"reason": "high"}, "hash": "09ce2f0e5ad516b91a7797eb07301c7af7a804db612011778e6ab4a4dbe15c74"}, "payload": {"seq": "00000007"}}`,
			aliased: func(e *envelope.Envelope) []string {
				return []string{*e.Key, e.Meta.Hash, e.Meta.Headers["reason"], e.Meta.SchemaID}
			},
		},
		{
			name:    "escaped strings are unescaped, not aliased",
			wire:    `{"ts": 1, "key": "caf\u00e9", "meta": {"schema_id": "s", "track": "v1", "headers": {"r\u00e9": "a\nb"}, "hash": ""}, "payload": {}}`,
			aliased: func(e *envelope.Envelope) []string { return nil },
			copied: func(e *envelope.Envelope) []string {
				return []string{*e.Key, e.Meta.Headers["ré"]}
			},
		},
	}
	inside := func(b []byte, s string) bool {
		base, p := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(unsafe.Pointer(unsafe.StringData(s)))
		return p >= base && p+uintptr(len(s)) <= base+uintptr(len(b))
	}
	c := &envelope.Codec{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.wire)
			want, err := c.Decode(b)
			require.NoError(t, err)
			got, err := c.DecodeImmutable(b)
			require.NoError(t, err)
			require.Equal(t, want, got)
			for _, s := range tc.aliased(got) {
				require.True(t, inside(b, s), "%q aliases the input", s)
			}
			if tc.copied != nil {
				for _, s := range tc.copied(got) {
					require.False(t, inside(b, s), "%q is unescaped into memory of its own", s)
				}
			}
			for _, s := range tc.aliased(want) {
				require.False(t, inside(b, s), "Decode copies %q", s)
			}
		})
	}
	b := []byte(tests[0].wire)
	copies := testing.AllocsPerRun(100, func() { _, _ = c.Decode(b) })
	aliases := testing.AllocsPerRun(100, func() { _, _ = c.DecodeImmutable(b) })
	require.Equal(t, copies-1, aliases, "allocations: Decode %v, DecodeImmutable %v", copies, aliases)
}
