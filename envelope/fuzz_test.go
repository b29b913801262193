package envelope_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/pulse-bus/pulse/envelope"
)

// FuzzDecode proves, for any input, that Decode never panics, that every error it returns is
// poison with a short reason, and that whatever it accepts survives a re-encode in the
// envelope's own track: decoding that again gives an equal envelope (payload compared as JSON
// values, number text included), and encoding that gives the same bytes again (a fixed point).
//
// The seed corpus is testdata/fuzz/FuzzDecode (the fixtures and edge cases, plus inputs the
// fuzzer found); `go test` runs it, `go test -run x -fuzz FuzzDecode ./envelope` explores.
func FuzzDecode(f *testing.F) {
	for _, name := range fixtureNames(f) {
		f.Add(readFixture(f, name))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		original := bytes.Clone(b)
		e, err := (&envelope.Codec{}).Decode(b)
		if !bytes.Equal(b, original) {
			t.Fatalf("Decode modified its input")
		}
		// DecodeImmutable reads the same envelope, or fails the same way.
		shared, sharedErr := (&envelope.Codec{}).DecodeImmutable(bytes.Clone(b))
		if (err == nil) != (sharedErr == nil) || err != nil && err.Error() != sharedErr.Error() {
			t.Fatalf("Decode: %v; DecodeImmutable: %v", err, sharedErr)
		}
		if err == nil && !reflect.DeepEqual(e, shared) {
			t.Fatalf("Decode: %+v; DecodeImmutable: %+v", e, shared)
		}
		if err != nil {
			if envelope.Reason(err) == "" {
				t.Fatalf("error without a poison reason: %v", err)
			}
			return
		}
		if e.Meta.Track == envelope.TrackV1 && e.ID != "" {
			t.Fatalf("v1 envelope with id %q", e.ID)
		}
		checkAgainstEncodingJSON(t, b, e)
		// A zero ts means "unset" to Encode, which fills it from the clock: pin the clock at
		// the epoch so that zero stays zero.
		c := &envelope.Codec{Track: e.Meta.Track, Now: func() time.Time { return time.Unix(0, 0) }}
		again := *e
		b2, err := c.Encode(&again)
		if err != nil {
			t.Fatalf("re-encode of an accepted envelope failed: %v\ninput: %q", err, b)
		}
		e2, err := c.Decode(b2)
		if err != nil {
			t.Fatalf("decode of the re-encoded envelope failed: %v\nre-encoded: %q", err, b2)
		}
		assertSameEnvelope(t, e, e2, b2)

		third := *e2
		b3, err := c.Encode(&third)
		if err != nil {
			t.Fatalf("third encode failed: %v", err)
		}
		if !bytes.Equal(b2, b3) {
			t.Fatalf("encoding is not a fixed point:\n%q\n%q", b2, b3)
		}
	})
}

// checkAgainstEncodingJSON is a differential check of the hand-written reader: what it
// accepted is valid JSON, and encoding/json (into maps, whose keys match exactly and whose
// repeated keys take the last value) reads the same fields out of it.
func checkAgainstEncodingJSON(t *testing.T, b []byte, e *envelope.Envelope) {
	t.Helper()
	if !json.Valid(b) {
		t.Fatalf("accepted invalid JSON %q", b)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatalf("encoding/json cannot read an accepted envelope: %v", err)
	}
	var meta struct {
		SchemaID string            `json:"schema_id"`
		Track    string            `json:"track"`
		Headers  map[string]string `json:"headers"`
	}
	var metaFields map[string]json.RawMessage
	if err := json.Unmarshal(top["meta"], &metaFields); err != nil {
		t.Fatalf("meta: %v", err)
	}
	for name, dst := range map[string]any{"schema_id": &meta.SchemaID, "track": &meta.Track, "headers": &meta.Headers} {
		if raw, ok := metaFields[name]; ok {
			if err := json.Unmarshal(raw, dst); err != nil {
				t.Fatalf("meta.%s: %v", name, err)
			}
		}
	}
	if meta.SchemaID == envelope.WrappedSchemaID {
		checkAgainstEncodingJSON(t, top["payload"], e)
		return
	}
	var ts float64
	var key *string
	if err := json.Unmarshal(top["ts"], &ts); err != nil {
		t.Fatalf("ts: %v", err)
	}
	if raw, ok := top["key"]; ok {
		if err := json.Unmarshal(raw, &key); err != nil {
			t.Fatalf("key: %v", err)
		}
	}
	switch {
	case ts != e.TS:
		t.Fatalf("ts: encoding/json reads %v, Decode %v", ts, e.TS)
	case (key == nil) != (e.Key == nil) || key != nil && *key != *e.Key:
		t.Fatalf("key: encoding/json reads %v, Decode %v", key, e.Key)
	case meta.SchemaID != e.Meta.SchemaID || meta.Track != string(e.Meta.Track):
		t.Fatalf("meta: encoding/json reads %+v, Decode %+v", meta, e.Meta)
	case !maps.Equal(meta.Headers, e.Meta.Headers):
		t.Fatalf("headers: encoding/json reads %q, Decode %q", meta.Headers, e.Meta.Headers)
	case !bytes.Equal(top["payload"], e.Payload):
		t.Fatalf("payload: encoding/json reads %s, Decode %s", top["payload"], e.Payload)
	}
}

func assertSameEnvelope(t *testing.T, a, b *envelope.Envelope, wire []byte) {
	t.Helper()
	switch {
	case a.ID != b.ID:
		t.Fatalf("id %q became %q", a.ID, b.ID)
	case a.TS != b.TS:
		t.Fatalf("ts %v became %v", a.TS, b.TS)
	case (a.Key == nil) != (b.Key == nil) || a.KeyOf() != b.KeyOf():
		t.Fatalf("key %v became %v", a.Key, b.Key)
	case a.Meta.SchemaID != b.Meta.SchemaID:
		t.Fatalf("schema_id %q became %q", a.Meta.SchemaID, b.Meta.SchemaID)
	case a.Meta.Track != b.Meta.Track:
		t.Fatalf("track %q became %q", a.Meta.Track, b.Meta.Track)
	case !maps.Equal(a.Meta.Headers, b.Meta.Headers):
		t.Fatalf("headers %v became %v", a.Meta.Headers, b.Meta.Headers)
	}
	va, vb := jsonValue(t, a.Payload), jsonValue(t, b.Payload)
	if !reflect.DeepEqual(va, vb) {
		t.Fatalf("payload %s became %s\nwire: %q", a.Payload, b.Payload, wire)
	}
	if a.Meta.Track == envelope.TrackV2 {
		var ca bytes.Buffer
		if err := json.Compact(&ca, a.Payload); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ca.Bytes(), b.Payload) {
			t.Fatalf("v2 payload not sent as its compact text: %s became %s", ca.Bytes(), b.Payload)
		}
	}
}

// jsonValue parses JSON keeping number text (json.Number), so that "1.0" and "1" differ.
func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("payload %q is not JSON: %v", b, err)
	}
	return v
}

// FuzzEncodeDecode proves, for envelopes built from arbitrary field values, that Encode either
// refuses (NaN or infinite ts) or writes bytes that Decode reads back to the same envelope on
// both tracks, with and without signing: strings with any characters (invalid UTF-8 reads back
// as U+FFFD, as encoding/json does), any float ts, any payload string.
func FuzzEncodeDecode(f *testing.F) {
	f.Add(true, false, "01JAB", "coord-1", "telemetry.FeedbackEvent", "reason", "high_watermark", 1729263600.1, "bars_1", []byte(`{"n":1.0}`))
	f.Add(false, true, "", "", "s", "", "", 0.0, "caf\u00e9 \U0001d11e \x7f \b", []byte(`{}`))
	f.Add(false, false, "x", "\xff", "\"\\/", "\u2028", "\x00", math.Copysign(0, -1), "\xed\xa0\x80", []byte(`[1, "\ud800"]`))
	f.Fuzz(func(t *testing.T, v2, sign bool, id, key, schema, hk, hv string, ts float64, s string, extra []byte) {
		if schema == "" || schema == envelope.WrappedSchemaID {
			return
		}
		track := envelope.TrackV1
		if v2 {
			track = envelope.TrackV2
		}
		quoted, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		payload := `{"s":` + string(quoted)
		if json.Valid(extra) {
			payload += `,"extra":` + string(extra)
		}
		payload += "}"
		c := &envelope.Codec{Track: track, Now: func() time.Time { return time.Unix(0, 0) }}
		if sign {
			c.Signer = envelope.NewSigner("fuzz-token")
		}
		e := &envelope.Envelope{
			ID: id, TS: ts, Key: &key,
			Meta:    envelope.Meta{SchemaID: schema, Headers: map[string]string{hk: hv}},
			Payload: json.RawMessage(payload),
		}
		b, err := c.Encode(e)
		if ts != ts || ts > 1.7976931348623157e308 || ts < -1.7976931348623157e308 {
			if err == nil {
				t.Fatalf("encoded ts %v", ts)
			}
			return
		}
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		got, err := c.Decode(b)
		if err != nil {
			t.Fatalf("decode: %v\n%q", err, b)
		}
		valid := func(s string) string { return string([]rune(s)) }
		wantID := ""
		if v2 {
			wantID = valid(e.ID)
		}
		wantHeaders := map[string]string{valid(hk): valid(hv)}
		if sign {
			wantHeaders[envelope.SignatureHeader] = e.Meta.Headers[envelope.SignatureHeader]
		}
		switch {
		case got.ID != wantID:
			t.Fatalf("id %q read back as %q", wantID, got.ID)
		case got.TS != ts:
			t.Fatalf("ts %v read back as %v", ts, got.TS)
		case got.KeyOf() != valid(key):
			t.Fatalf("key %q read back as %q", key, got.KeyOf())
		case got.Meta.SchemaID != valid(schema):
			t.Fatalf("schema_id %q read back as %q", schema, got.Meta.SchemaID)
		case !maps.Equal(got.Meta.Headers, wantHeaders):
			t.Fatalf("headers %q read back as %q", wantHeaders, got.Meta.Headers)
		}
		if !reflect.DeepEqual(jsonValue(t, []byte(payload)), jsonValue(t, got.Payload)) {
			t.Fatalf("payload %s read back as %s", payload, got.Payload)
		}
	})
}
