// Package bench measures Pulse beside the raw broker clients and Watermill, on the same
// machine, in the same run, with the same ~200-byte messages: the inmem bus against
// Watermill's GoChannel, Pulse on Redis Streams against raw go-redis and Watermill's
// redisstream, and Pulse on JetStream against raw nats.go and Watermill's nats jetstream.
//
// Run (as a report) is what cmd/pulsebench and `make bench` use; the testing.B benchmarks in
// this package measure the same trials one at a time. Every trial starts on a fresh stream and
// group and deletes it afterwards. Servers are the bench's own: a redis-server on a free
// loopback port and an embedded nats-server with a file store in a temporary directory.
package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/pulse-bus/pulse/envelope"
)

// DefaultMessageSize is the target encoded size of one envelope, in bytes.
const DefaultMessageSize = 200

// SchemaID is the schema of every benchmark envelope (no schema registry: any id is accepted).
const SchemaID = "bench.m"

// seqWidth is the width of the zero-padded sequence number carried in each payload, so that
// every message of a run has the same size.
const seqWidth = 8

// maxMessages is one more than the largest sequence number seqWidth digits hold.
const maxMessages = 100_000_000

var seqField = []byte(`"seq":`)

// Workload builds the benchmark envelopes. Every contender sends the same bytes: Pulse
// encodes envelopes with its codec on Publish (that cost is part of Pulse), and the raw and
// Watermill contenders send bytes encoded beforehand by the same codec.
//
// A Workload is safe for concurrent use once built.
type Workload struct {
	codec *envelope.Codec
	pad   string
	// Size is the encoded size of the template envelope, in bytes.
	Size int
	// bodies are pre-encoded messages cycled by the contenders that send bytes.
	bodies [][]byte
}

// NewWorkload returns a workload whose envelopes, encoded in track, are about size bytes: the
// smallest envelope (null key, no headers, a payload holding only the sequence number) is
// already about 210 bytes in v1 and 228 in v2 (the hash alone is 64), so below that the
// envelopes are as small as the format allows; above it a "pad" field fills them up.
func NewWorkload(track envelope.Track, size int) (*Workload, error) {
	if _, err := envelope.ParseTrack(string(track)); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	w := &Workload{codec: &envelope.Codec{Track: track}}
	// Grow the padding until the template reaches the target size.
	for pad := 0; ; pad++ {
		w.pad = string(bytes.Repeat([]byte("x"), pad))
		b, err := w.codec.Encode(w.Envelope(0))
		if err != nil {
			return nil, fmt.Errorf("bench: encode template envelope: %w", err)
		}
		if len(b) >= size || pad > size {
			w.Size = len(b)
			break
		}
	}
	const poolSize = 1024
	w.bodies = make([][]byte, poolSize)
	for i := range w.bodies {
		b, err := w.Encode(i)
		if err != nil {
			return nil, err
		}
		w.bodies[i] = b
	}
	return w, nil
}

// Envelope returns a new envelope carrying sequence number seq.
func (w *Workload) Envelope(seq int) *envelope.Envelope {
	payload := `{"seq":"` + padSeq(seq) + `"}`
	if w.pad != "" {
		payload = `{"seq":"` + padSeq(seq) + `","pad":"` + w.pad + `"}`
	}
	return &envelope.Envelope{Meta: envelope.Meta{SchemaID: SchemaID}, Payload: json.RawMessage(payload)}
}

// Encode returns the wire bytes of the envelope for seq, as Pulse's Publish would write them.
func (w *Workload) Encode(seq int) ([]byte, error) {
	b, err := w.codec.Encode(w.Envelope(seq))
	if err != nil {
		return nil, fmt.Errorf("bench: encode envelope %d: %w", seq, err)
	}
	return b, nil
}

// Body returns a pre-encoded message (the same bytes for the same i); callers must not modify
// it.
func (w *Workload) Body(i int) []byte { return w.bodies[i%len(w.bodies)] }

// Codec returns the codec the workload encodes with.
func (w *Workload) Codec() *envelope.Codec { return w.codec }

func padSeq(seq int) string {
	s := strconv.Itoa(seq)
	if len(s) >= seqWidth {
		return s
	}
	return string(bytes.Repeat([]byte("0"), seqWidth-len(s))) + s
}

// SeqOf finds the sequence number in a message body or payload; ok is false if there is none.
func SeqOf(b []byte) (seq int, ok bool) {
	i := bytes.Index(b, seqField)
	if i < 0 {
		return 0, false
	}
	i += len(seqField)
	for i < len(b) && b[i] == ' ' { // v1 writes Python's spacing
		i++
	}
	if i >= len(b) || b[i] != '"' || len(b) < i+1+seqWidth {
		return 0, false
	}
	n, err := strconv.Atoi(string(b[i+1 : i+1+seqWidth]))
	if err != nil {
		return 0, false
	}
	return n, true
}
