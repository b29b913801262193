package envelope_test

import (
	"encoding/json"
	"testing"

	"github.com/pulse-bus/pulse/envelope"
)

// benchPayload is a FeedbackEvent of about 200 bytes, the size the bus benchmarks use.
const benchPayload = `{"coordinator_id":"bars_1-us-east-coordinator","queue_size":8523,"capacity":10000,"level":"hard","source":"store","ts":1760812345.6789,"note":"queue above the high watermark for 3 consecutive checks"}`

func benchEnvelope() *envelope.Envelope {
	return &envelope.Envelope{
		TS:      1760812345.712345,
		Key:     ptr("bars_1"),
		Meta:    envelope.Meta{SchemaID: "telemetry.FeedbackEvent", Headers: map[string]string{"reason": "high_watermark", "utilization": "0.852300"}},
		Payload: json.RawMessage(benchPayload),
	}
}

func benchEncode(b *testing.B, track envelope.Track) {
	c := &envelope.Codec{Track: track}
	e := benchEnvelope()
	out, err := c.Encode(e)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(out)))
	b.ReportAllocs()
	for b.Loop() {
		e.ID = "" // a new message each time on v2
		if _, err := c.Encode(e); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDecode decodes an envelope of track with decode (Codec.Decode or DecodeImmutable).
func benchDecode(b *testing.B, track envelope.Track, decode func(*envelope.Codec, []byte) (*envelope.Envelope, error)) {
	in, err := (&envelope.Codec{Track: track}).Encode(benchEnvelope())
	if err != nil {
		b.Fatal(err)
	}
	c := &envelope.Codec{}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(c, in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeV1(b *testing.B) { benchEncode(b, envelope.TrackV1) }
func BenchmarkEncodeV2(b *testing.B) { benchEncode(b, envelope.TrackV2) }
func BenchmarkDecodeV1(b *testing.B) { benchDecode(b, envelope.TrackV1, (*envelope.Codec).Decode) }
func BenchmarkDecodeV2(b *testing.B) { benchDecode(b, envelope.TrackV2, (*envelope.Codec).Decode) }

// BenchmarkDecodeImmutable is what the Bus decodes deliveries with: strings alias the input.
func BenchmarkDecodeImmutable(b *testing.B) {
	for _, track := range []envelope.Track{envelope.TrackV1, envelope.TrackV2} {
		b.Run(string(track), func(b *testing.B) { benchDecode(b, track, (*envelope.Codec).DecodeImmutable) })
	}
}

// BenchmarkDecodeV2Signed is a v2 decode with PUBLISHER_TOKEN set (HMAC verification).
func BenchmarkDecodeV2Signed(b *testing.B) {
	signer := envelope.NewSigner(testToken)
	in, err := (&envelope.Codec{Track: envelope.TrackV2, Signer: signer}).Encode(benchEnvelope())
	if err != nil {
		b.Fatal(err)
	}
	c := &envelope.Codec{Signer: signer}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Decode(in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeBatchV1 is what the Bus does per published message: AppendEncodeBatch of 256
// envelopes without a TS into a reused buffer (building the envelopes included). One op is one
// message.
func BenchmarkEncodeBatchV1(b *testing.B) {
	c := &envelope.Codec{Track: envelope.TrackV1}
	const batch = 256
	envs := make([]*envelope.Envelope, batch)
	var buf []byte
	var ends []int
	b.ReportAllocs()
	for i := 0; i < b.N; i += batch {
		for j := range envs {
			e := benchEnvelope()
			e.TS = 0
			envs[j] = e
		}
		var err error
		if buf, ends, err = c.AppendEncodeBatch(buf[:0], ends[:0], envs[:min(batch, b.N-i)]); err != nil {
			b.Fatal(err)
		}
	}
}
