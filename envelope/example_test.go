package envelope_test

import (
	"fmt"
	"log"

	"github.com/pulse-bus/pulse/envelope"
)

// Encode on track v1 writes what the Python market-data-core writes, byte for byte; Decode
// reads either track.
func ExampleCodec() {
	key := "bars_1"
	e := &envelope.Envelope{
		TS:      1729263600.5,
		Key:     &key,
		Meta:    envelope.Meta{SchemaID: "telemetry.FeedbackEvent", Headers: map[string]string{"reason": "high_watermark"}},
		Payload: []byte(`{"coordinator_id":"bars_1","level":"hard"}`),
	}
	v1 := envelope.Codec{Track: envelope.TrackV1}
	wire, err := v1.Encode(e)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(wire))

	back, err := (&envelope.Codec{}).Decode(wire)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(back.Meta.Track, back.KeyOf(), back.Header("reason"), string(back.Payload))

	_, err = (&envelope.Codec{}).Decode([]byte(`{"meta":{"track":"v9","schema_id":"x"},"ts":1,"payload":{}}`))
	fmt.Println(envelope.Reason(err))
	// Output:
	// {"ts": 1729263600.5, "key": "bars_1", "meta": {"schema_id": "telemetry.FeedbackEvent", "track": "v1", "headers": {"reason": "high_watermark"}, "hash": "1d16c5128b1d29e114d323b48919669bcf48c885b339cc3c09a8a22685494e2c"}, "payload": {"coordinator_id": "bars_1", "level": "hard"}}
	// v1 bars_1 high_watermark {"coordinator_id": "bars_1", "level": "hard"}
	// unknown_track
}
