package transport

import (
	"sync"

	"github.com/pulse-bus/pulse/envelope"

	"github.com/pulse-bus/pulse/transport/driver"
)

// parallelDecodeMin is the smallest batch whose decoding a subscription shares with a helper
// goroutine; a smaller one is decoded inline (a goroutine would cost more than it saves, and
// a lone message waits for nothing). JetStream hands the Bus batches of ~10 at full speed:
// with 8 rather than 32 they are shared too, and consume+ack on a nats-server process went
// from 0.885× to 0.945× of raw nats.go and from 0.945× to 0.98× of `nats bench js consume`
// (the medians of 6 and 8 runs of `pulsebench -only jetstream-external -reps 5`, the two
// settings alternating); 4 gained nothing over 8.
const parallelDecodeMin = 8

// batchDecoder decodes one batch for a subscription that handles it in order (Concurrency 1).
// Decoding is most of the Bus's own work per message (~70% of it on Redis), and it depends on
// nothing but the bytes, so a helper goroutine decodes the batch from its end while the
// handling goroutine decodes from its start and handles each message in turn; they meet where
// the handler has got to. With a slow handler the helper decodes nearly all of the batch; with
// a fast one about half. Handling order is unchanged, and each message is decoded once.
//
// The helper belongs to the batch: finish stops it and waits for it, and process calls finish
// before it returns.
type batchDecoder struct {
	codec *envelope.Codec
	batch []*driver.Delivery

	// Filled by the helper for the messages it claimed; read by get after done is closed.
	envs []*envelope.Envelope
	errs []error

	mu     sync.Mutex
	lo, hi int           // [lo, hi) is not yet claimed: get claims upwards from lo, the helper downwards from hi
	done   chan struct{} // closed when the helper has stopped; nil when there is none
}

// newBatchDecoder starts decoding batch, with a helper goroutine if it is large enough.
func newBatchDecoder(codec *envelope.Codec, batch []*driver.Delivery) *batchDecoder {
	b := &batchDecoder{codec: codec, batch: batch}
	if len(batch) >= parallelDecodeMin {
		b.envs = make([]*envelope.Envelope, len(batch))
		b.errs = make([]error, len(batch))
		b.hi = len(batch)
		b.done = make(chan struct{})
		go b.help()
	}
	return b
}

// get returns the decoding of batch[i]. Calls must come in increasing i, from one goroutine.
func (b *batchDecoder) get(i int) (*envelope.Envelope, error) {
	if b.done != nil {
		b.mu.Lock()
		mine := i < b.hi
		if mine {
			b.lo = i + 1
		}
		b.mu.Unlock()
		if !mine { // the helper claimed it: wait until it has decoded everything it claimed
			<-b.done
			return b.envs[i], b.errs[i]
		}
	}
	return b.codec.DecodeImmutable(b.batch[i].Body)
}

// help decodes unclaimed messages from the end of the batch until it meets the handler.
func (b *batchDecoder) help() {
	defer close(b.done)
	for {
		b.mu.Lock()
		if b.hi <= b.lo {
			b.mu.Unlock()
			return
		}
		b.hi--
		j := b.hi
		b.mu.Unlock()
		b.envs[j], b.errs[j] = b.codec.DecodeImmutable(b.batch[j].Body)
	}
}

// finish stops the helper, if any, and waits for it (the handler may stop early: past the
// drain deadline the rest of the batch is left for redelivery).
func (b *batchDecoder) finish() {
	if b.done == nil {
		return
	}
	b.mu.Lock()
	b.hi = min(b.hi, b.lo) // claim nothing more
	b.mu.Unlock()
	<-b.done
}
