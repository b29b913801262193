package transporttest

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/pyfixtures"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// received is a copy of what a handler was given (a Delivery must not be retained).
type received struct {
	Env         envelope.Envelope
	Raw         []byte
	TransportID string
	ID          string
	Attempt     int
	Stream      string
}

func copyDelivery(d *transport.Delivery) received {
	env := *d.Envelope
	env.Payload = slices.Clone(d.Envelope.Payload)
	env.Meta.Headers = maps.Clone(d.Envelope.Meta.Headers)
	return received{Env: env, Raw: slices.Clone(d.Raw), TransportID: d.TransportID, ID: d.ID(), Attempt: d.Attempt, Stream: d.Stream}
}

// receiver collects copies of deliveries by transport id.
type receiver struct {
	mu  sync.Mutex
	got []received
}

func (r *receiver) handler(ctx context.Context, d *transport.Delivery) error {
	c := copyDelivery(d)
	r.mu.Lock()
	r.got = append(r.got, c)
	r.mu.Unlock()
	return nil
}

func (r *receiver) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func (r *receiver) all() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// testRoundTrip proves that what Bus.Publish writes arrives intact through the broker: the
// exact wire bytes, payload, key, schema_id, track and ts as published, attempt 1 and a
// distinct transport id per message; on v2 the producer id is the delivery's id and headers
// survive end to end, on v1 the transport id stands in for the id. Single publishes and
// batches both work, and the Observer sees every publish and every success.
func testRoundTrip(e *env) {
	pub, con := e.bus(), e.bus()
	var r receiver
	e.subscribe(con, "g", "c", r.handler)
	envs := e.publish(pub, 0, 9, 4) // batches of 4, 4 and 1
	envs = append(envs, e.publish(pub, 9, 1, 1)...)
	e.eventually(func() bool { return r.len() >= len(envs) }, "all %d messages delivered", len(envs))

	got := r.all()
	require.Len(e.t, got, len(envs), "each message delivered once")
	byN := map[int]received{}
	tids := map[string]bool{}
	for _, g := range got {
		var p testPayload
		require.NoError(e.t, json.Unmarshal(g.Env.Payload, &p))
		byN[p.N] = g
		require.False(e.t, tids[g.TransportID], "transport id %s given twice", g.TransportID)
		tids[g.TransportID] = true
	}
	for i, want := range envs {
		g, ok := byN[i]
		require.True(e.t, ok, "message %d not delivered", i)
		wire, err := pub.Codec().Encode(want) // deterministic once Publish filled in id and ts
		require.NoError(e.t, err)
		require.Equal(e.t, string(wire), string(g.Raw), "wire bytes of message %d", i)
		require.Equal(e.t, TestSchema, g.Env.Meta.SchemaID)
		require.Equal(e.t, e.track, g.Env.Meta.Track)
		require.Equal(e.t, want.KeyOf(), g.Env.KeyOf())
		require.Equal(e.t, want.TS, g.Env.TS, "ts survives exactly")
		require.JSONEq(e.t, string(want.Payload), string(g.Env.Payload))
		require.Equal(e.t, 1, g.Attempt)
		require.Equal(e.t, e.stream, g.Stream)
		require.NotEmpty(e.t, g.TransportID)
		if e.track == envelope.TrackV2 {
			require.NotEmpty(e.t, want.ID)
			require.Equal(e.t, want.ID, g.ID, "v2: the producer id is the delivery's id")
			require.Equal(e.t, want.Meta.Headers, g.Env.Meta.Headers, "v2: headers survive end to end")
		} else {
			require.Equal(e.t, g.TransportID, g.ID, "v1: the transport id stands in for the id")
		}
	}
	require.Equal(e.t, len(envs), e.rec.Outcome(e.stream, transport.OutcomeSuccess), "outcomes %v", e.rec.snapshot(e.stream))
	require.Equal(e.t, len(envs), e.rec.PublishedCount(e.stream, true))
	require.GreaterOrEqual(e.t, e.rec.Lags(e.stream), len(envs))
}

// testPythonFixtures proves that the bytes the Python market-data-core writes, published raw,
// are delivered unchanged and decoded: v1 with the transport id as the delivery's id, a null
// key kept null, the hash that never matches ignored, and the double-wrapped Store envelope
// unwrapped to its inner event with the inner headers.
func testPythonFixtures(e *env) {
	fixtures := []struct {
		file, schema, key string
		field, value      string
		headers           map[string]string
	}{
		{"v1-feedback-hard.json", "telemetry.FeedbackEvent", "bars_1", "level", "hard", nil},
		{"v1-feedback-ok-null-key.json", "telemetry.FeedbackEvent", "", "level", "ok", nil},
		{"v1-rate-adjustment.json", "telemetry.RateAdjustment", "ibkr", "reason", "soft", nil},
		{"v1-store-double-wrapped.json", "telemetry.FeedbackEvent", "bars_1", "level", "soft",
			map[string]string{"reason": "high_watermark", "utilization": "0.850000"}},
	}
	b := e.bus()
	msgs := make([]driver.Message, len(fixtures))
	for i, f := range fixtures {
		msgs[i] = driver.Message{Body: pyfixtures.Message(f.file)}
	}
	ids, err := b.PublishRaw(e.ctx(), e.stream, msgs...)
	require.NoError(e.t, err)
	require.Len(e.t, ids, len(msgs))

	var r receiver
	e.subscribe(e.bus(), "g", "c", r.handler)
	e.eventually(func() bool { return r.len() >= len(fixtures) }, "all fixtures delivered")
	byTID := map[string]received{}
	for _, g := range r.all() {
		byTID[g.TransportID] = g
	}
	for i, f := range fixtures {
		g, ok := byTID[ids[i]]
		require.True(e.t, ok, "%s not delivered under transport id %s", f.file, ids[i])
		require.Equal(e.t, string(msgs[i].Body), string(g.Raw), "%s: bytes unchanged", f.file)
		require.Equal(e.t, f.schema, g.Env.Meta.SchemaID, f.file)
		require.Equal(e.t, envelope.TrackV1, g.Env.Meta.Track, f.file)
		if f.key == "" {
			require.Nil(e.t, g.Env.Key, "%s: null key stays null", f.file)
		} else {
			require.Equal(e.t, f.key, g.Env.KeyOf(), f.file)
		}
		require.Equal(e.t, ids[i], g.ID, "%s: v1 id is the transport id", f.file)
		var p map[string]any
		require.NoError(e.t, json.Unmarshal(g.Env.Payload, &p))
		require.Equal(e.t, f.value, p[f.field], f.file)
		for k, v := range f.headers {
			require.Equal(e.t, v, g.Env.Header(k), "%s: header %s", f.file, k)
		}
	}
	require.Zero(e.t, e.rec.Outcome(e.stream, transport.OutcomeRejected), "no fixture is rejected")
}

// testConcurrentPublishers proves that many publishers at once (several goroutines on each of
// several buses, batches of varied size) lose nothing, and that a consumer running handlers
// concurrently hands each message to its handler exactly once.
func testConcurrentPublishers(e *env) {
	const (
		buses      = 4
		perBus     = 2
		perRoutine = 150
		total      = buses * perBus * perRoutine
	)
	col := newCollector()
	e.subscribe(e.bus(), "g", "c", col.handler("c", nil), func(o *transport.SubscribeOptions) {
		o.Concurrency = 4
		o.BatchSize = 64
	})
	var g errgroup.Group
	for b := range buses {
		bus := e.bus()
		for r := range perBus {
			from := (b*perBus + r) * perRoutine
			g.Go(func() error {
				envs := envelopes(from, perRoutine)
				for i, size := 0, 1; i < len(envs); i, size = i+size, size%7+1 {
					if err := bus.Publish(e.ctx(), e.stream, envs[i:min(i+size, len(envs))]...); err != nil {
						return err
					}
				}
				return nil
			})
		}
	}
	require.NoError(e.t, g.Wait())
	e.eventually(func() bool { return col.distinct() == total }, "all %d messages handled", total)
	require.Empty(e.t, col.multiples(), "messages handled more than once")
	require.Equal(e.t, total, col.total())
	require.Equal(e.t, total, e.rec.PublishedCount(e.stream, true))
	e.eventually(func() bool { return e.rec.Outcome(e.stream, transport.OutcomeSuccess) == total }, "every delivery counted success")
	e.requirePendingZero("g")
}

// testGroupsFanOut proves that every group gets every message: two groups on one stream each
// handle all of them, once each.
func testGroupsFanOut(e *env) {
	const total = 100
	a, b := newCollector(), newCollector()
	e.subscribe(e.bus(), "ga", "c", a.handler("a", nil))
	e.subscribe(e.bus(), "gb", "c", b.handler("b", nil))
	e.publish(e.bus(), 0, total, 10)
	e.eventually(func() bool { return a.distinct() == total && b.distinct() == total },
		"both groups get all %d messages", total)
	require.Empty(e.t, a.multiples())
	require.Empty(e.t, b.multiples())
}

// testMembersCompete proves that the members of one group share its messages: each member
// gets some, together they get all, and no message goes to both. The members run on
// separate buses (separate processes, separate idempotency records), so a message given to
// both would be handled by both. Each member's first handler call waits until the other has
// one too, so that neither can take the whole stream alone.
func testMembersCompete(e *env) {
	const total = 200
	col := newCollector()
	first := map[string]chan struct{}{"m1": make(chan struct{}), "m2": make(chan struct{})}
	once := map[string]*sync.Once{"m1": {}, "m2": {}}
	gate := func(member, other string) func(context.Context, *transport.Delivery, handled) error {
		return func(ctx context.Context, _ *transport.Delivery, _ handled) error {
			once[member].Do(func() { close(first[member]) })
			select {
			case <-first[other]:
			case <-ctx.Done():
			case <-time.After(e.timeout()):
			}
			return nil
		}
	}
	small := func(o *transport.SubscribeOptions) { o.BatchSize = 4 }
	e.subscribe(e.bus(), "g", "m1", col.handler("m1", gate("m1", "m2")), small)
	e.subscribe(e.bus(), "g", "m2", col.handler("m2", gate("m2", "m1")), small)
	e.publish(e.bus(), 0, total, 10)
	e.eventually(func() bool { return col.distinct() == total }, "all %d messages handled", total)

	m := col.members()
	require.NotEmpty(e.t, m["m1"], "member m1 got no message")
	require.NotEmpty(e.t, m["m2"], "member m2 got no message")
	var both []int
	for n := range m["m1"] {
		if m["m2"][n] {
			both = append(both, n)
		}
	}
	require.Empty(e.t, both, "messages given to both members")
	require.Empty(e.t, col.multiples())
	require.Equal(e.t, total, len(m["m1"])+len(m["m2"]))
}

// testLateGroup proves that a group created after messages were published still receives
// them, from the start of the retained stream (the Python core created groups at `$` and lost
// them), that a second late group gets them all again, and that both go on receiving what is
// published later.
func testLateGroup(e *env) {
	pub := e.bus()
	e.publish(pub, 0, 20, 5)
	late1 := newCollector()
	e.subscribe(e.bus(), "late1", "c", late1.handler("late1", nil))
	e.eventually(func() bool { return late1.distinct() == 20 }, "the late group gets the earlier messages")
	late2 := newCollector()
	e.subscribe(e.bus(), "late2", "c", late2.handler("late2", nil))
	e.eventually(func() bool { return late2.distinct() == 20 }, "a second late group gets them all again")
	e.publish(pub, 20, 5, 5)
	e.eventually(func() bool { return late1.distinct() == 25 && late2.distinct() == 25 }, "both get later messages")
	require.Empty(e.t, late1.multiples())
	require.Empty(e.t, late2.multiples())
}

// publishRawBodies publishes bodies as they are and returns their transport ids.
func (e *env) publishRawBodies(b *transport.Bus, bodies ...[]byte) []string {
	e.t.Helper()
	msgs := make([]driver.Message, len(bodies))
	for i, body := range bodies {
		msgs[i] = driver.Message{Body: body}
	}
	ids, err := b.PublishRaw(e.ctx(), e.stream, msgs...)
	require.NoError(e.t, err)
	require.Len(e.t, ids, len(bodies))
	return ids
}

// encodeWith encodes a TestSchema-like envelope with b's codec.
func encodeWith(e *env, b *transport.Bus, schema, payload string) []byte {
	e.t.Helper()
	body, err := b.Codec().Encode(&envelope.Envelope{Meta: envelope.Meta{SchemaID: schema}, Payload: json.RawMessage(payload)})
	require.NoError(e.t, err)
	return body
}

func goodPayload(n int) string { return fmt.Sprintf(`{"n":%d,"pad":"p"}`, n) }
