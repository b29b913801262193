package transport

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"

	"github.com/pulse-bus/pulse/transport/driver"
)

// TestBatchDecoder: whatever the batch size, the handler's pace and where it stops, get
// returns for each message exactly what Decode returns (poison included), in handling order,
// and finish leaves no helper running (goleak checks the package).
func TestBatchDecoder(t *testing.T) {
	codec := &envelope.Codec{Track: envelope.TrackV2}
	body := func(i int) []byte {
		if i%7 == 3 {
			return []byte(`{"not": "an envelope"`) // poison
		}
		b, err := codec.Encode(&envelope.Envelope{Meta: envelope.Meta{SchemaID: "t.x"}, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))})
		require.NoError(t, err)
		return b
	}
	for _, n := range []int{0, 1, parallelDecodeMin - 1, parallelDecodeMin, 100, 256} {
		batch := make([]*driver.Delivery, n)
		for i := range batch {
			batch[i] = &driver.Delivery{Message: RawMessage{Body: body(i)}}
		}
		for _, stopAt := range []int{n, n / 2, 0} {
			for _, slow := range []bool{false, true} {
				t.Run(fmt.Sprintf("n=%d/stop=%d/slow=%v", n, stopAt, slow), func(t *testing.T) {
					dec := newBatchDecoder(codec, batch)
					for i := range stopAt {
						if slow { // a handler slower than decoding: the helper gets ahead
							runtime.Gosched()
						}
						env, err := dec.get(i)
						wantEnv, wantErr := codec.Decode(batch[i].Body)
						require.Equal(t, wantErr, err, "message %d", i)
						require.Equal(t, wantEnv, env, "message %d", i)
					}
					dec.finish()
					dec.finish() // idempotent
				})
			}
		}
	}
}
