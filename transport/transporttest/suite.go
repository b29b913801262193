package transporttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// TestSchema is the schema_id of the suite's own messages; its payload is
// {"n": <int ≥ 0>, "pad": <string>}.
const TestSchema = "conformance.Event"

// Suite timing, fixed so that it runs in seconds on every backend.
const (
	retryMin     = 5 * time.Millisecond
	retryMax     = 20 * time.Millisecond
	drainTimeout = 2 * time.Second
	// shortDrain is the drain timeout of a subscription whose handler hangs.
	shortDrain = 100 * time.Millisecond
	batchSize  = 16
	tick       = 5 * time.Millisecond
)

var bothTracks = []envelope.Track{envelope.TrackV1, envelope.TrackV2}

// testCase is one conformance test: run runs it once per listed track (as a subtest named
// after the track when there are several).
type testCase struct {
	name   string
	run    func(e *env)
	tracks []envelope.Track
	// needs returns why the test does not apply to h, or "".
	needs func(h Harness, drv driver.Driver) string
}

// cases is the suite, in the order it runs.
var cases = []testCase{
	{name: "RoundTrip", run: testRoundTrip, tracks: bothTracks},
	{name: "PythonFixtures", run: testPythonFixtures, tracks: []envelope.Track{envelope.TrackV1}},
	{name: "ConcurrentPublishers", run: testConcurrentPublishers, tracks: bothTracks},
	{name: "GroupsFanOut", run: testGroupsFanOut, tracks: bothTracks},
	{name: "MembersCompete", run: testMembersCompete, tracks: bothTracks},
	{name: "RetryThenDeadLetter", run: testRetryThenDeadLetter, tracks: bothTracks},
	{name: "HungConsumerRedelivered", run: testHungConsumerRedelivered, tracks: bothTracks},
	{name: "CrashedMemberRedelivered", run: testCrashedMemberRedelivered, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "PoisonDeadLetteredAtOnce", run: testPoison, tracks: bothTracks},
	{name: "LateGroupReadsFromStart", run: testLateGroup, tracks: bothTracks},
	{name: "FailOnceAppliedOnce", run: testFailOnceAppliedOnce, tracks: bothTracks},
	{name: "CancelMidStream", run: testCancelMidStream, tracks: bothTracks},
	{name: "RedeliveryAbsorbedAsDuplicate", run: testRedeliveryDuplicate, tracks: bothTracks},
	{name: "PublishRetrySameID", run: testPublishRetrySameID, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "StaleAndHandlerPanic", run: testStaleAndPanic, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "DriverReceiveHonoursContext", run: testDriverReceiveContext, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "DriverNakDelay", run: testDriverNakDelay, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "DriverHeadersAndIDs", run: testDriverHeadersAndIDs, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "DriverPositions", run: testDriverPositions, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "StreamAdmin", run: testStreamAdmin, tracks: []envelope.Track{envelope.TrackV2}, needs: needsAdmin},
	{name: "KeyValue", run: testKeyValue, tracks: []envelope.Track{envelope.TrackV2}, needs: needsKeyValue},
	{name: "PersistentAcrossDrivers", run: testPersistent, tracks: []envelope.Track{envelope.TrackV2}, needs: needsPersistent},
	{name: "TracePublishProcessAck", run: testTracePublishProcessAck, tracks: bothTracks},
	{name: "TraceBatchCreateSpans", run: testTraceBatch, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "TraceRedeliveryLinksFirstAttempt", run: testTraceRedelivery, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "TraceDeadLetterKeepsContext", run: testTraceDeadLetter, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "TraceNoContextNewTrace", run: testTraceNoContext, tracks: []envelope.Track{envelope.TrackV1}},
	{name: "TracePassThroughWhenOff", run: testTracePassThrough, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "TraceUnsampledNoSpans", run: testTraceUnsampled, tracks: []envelope.Track{envelope.TrackV2}},
	{name: "CloseIdempotentNoLeaks", run: testClose, tracks: []envelope.Track{envelope.TrackV2}},
}

func needsAdmin(_ Harness, drv driver.Driver) string {
	if _, ok := drv.(driver.StreamAdmin); !ok {
		return "the driver does not implement driver.StreamAdmin"
	}
	return ""
}

func needsPersistent(h Harness, _ driver.Driver) string {
	if !h.Caps.Persistent {
		return "Capabilities.Persistent is not declared"
	}
	return ""
}

// TrackEnv names the environment variable that restricts Run to one schema track ("v1" or
// "v2"; unset runs both): CI runs the suite once per track and backend.
const TrackEnv = "PULSE_TEST_TRACK"

// Run runs the conformance suite against the driver h opens, one subtest per test (and per
// schema track where the track matters; TrackEnv restricts it to one). See the package doc
// for the Harness contract.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Open == nil {
		t.Fatal("transporttest: Harness.Open is required")
	}
	// One driver, opened up front, answers the capability questions of needs.
	probe, err := h.Open(t.Context(), h.Config)
	require.NoError(t, err, "transporttest: Harness.Open")
	require.NoError(t, probe.Close(), "transporttest: closing the probe driver")
	only := envelope.Track(os.Getenv(TrackEnv))
	if only != "" && !slices.Contains(bothTracks, only) {
		t.Fatalf("transporttest: %s=%q (accepted: v1, v2, or unset for both)", TrackEnv, only)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.needs != nil {
				if why := c.needs(h, probe); why != "" {
					t.Skip(why)
				}
			}
			tracks := c.tracks
			if only != "" {
				if !slices.Contains(tracks, only) {
					t.Skipf("%s=%s selects track %s; this test runs on %v", TrackEnv, only, only, tracks)
				}
				tracks = []envelope.Track{only}
			}
			if len(c.tracks) == 1 {
				c.run(newEnv(t, h, tracks[0]))
				return
			}
			for _, tr := range tracks {
				t.Run(string(tr), func(t *testing.T) { c.run(newEnv(t, h, tr)) })
			}
		})
	}
}

// runID keeps stream names unique across runs of the suite against one long-lived broker.
var runID = strings.ToLower(envelope.NewID()[20:])

var streamSeq atomic.Int64

// env is the per-test environment: a unique stream, a Recorder, and helpers that open drivers
// and buses which are closed when the test ends.
type env struct {
	t      *testing.T
	h      Harness
	track  envelope.Track
	stream string
	rec    *Recorder
	names  atomic.Int64
}

func newEnv(t *testing.T, h Harness, track envelope.Track) *env {
	return &env{
		t:      t,
		h:      h,
		track:  track,
		stream: fmt.Sprintf("ct%s.t%d", runID, streamSeq.Add(1)),
		rec:    NewRecorder(),
	}
}

// name returns a fresh group or consumer name with prefix.
func (e *env) name(prefix string) string { return fmt.Sprintf("%s%d", prefix, e.names.Add(1)) }

func (e *env) ctx() context.Context { return e.t.Context() }

func (e *env) timeout() time.Duration { return e.h.timeout() }

func (e *env) ackWait() time.Duration { return e.h.ackWait() }

// config is the suite's Config for a bus of this test.
func (e *env) config() transport.Config {
	cfg := e.h.Config
	cfg.Track = e.track
	cfg.PublisherToken = ""
	cfg.Group = "g"
	cfg.Consumer = "c"
	cfg.AckWait = e.ackWait()
	cfg.MaxDeliveries = 5
	cfg.RetryBackoffMin = retryMin
	cfg.RetryBackoffMax = retryMax
	cfg.DrainTimeout = drainTimeout
	cfg.BatchSize = batchSize
	cfg.Observer = e.rec
	cfg.Schemas = testSchemas()
	cfg.Idempotency = nil
	cfg.SharedIdempotency = false
	return cfg
}

// openDriver opens a new driver on the harness's broker, closed when the test ends.
func (e *env) openDriver(cfg transport.Config) driver.Driver {
	e.t.Helper()
	drv, err := e.h.Open(e.ctx(), cfg)
	require.NoError(e.t, err, "Harness.Open")
	e.t.Cleanup(func() { _ = drv.Close() })
	return drv
}

// bus opens a new driver and a Bus over it (like another process), closed when the test ends.
// mods adjust the suite's config first.
func (e *env) bus(mods ...func(*transport.Config)) *transport.Bus {
	e.t.Helper()
	cfg := e.config()
	for _, m := range mods {
		m(&cfg)
	}
	return e.busOver(e.openDriver(cfg), cfg)
}

func (e *env) busOver(drv driver.Driver, cfg transport.Config) *transport.Bus {
	e.t.Helper()
	b, err := transport.New(drv, cfg)
	require.NoError(e.t, err, "transport.New")
	e.t.Cleanup(func() { _ = b.Close() })
	return b
}

// subscribe subscribes h to the test's stream as group/consumer; the subscription is closed
// when the test ends.
func (e *env) subscribe(b *transport.Bus, group, consumer string, h transport.Handler, opts ...func(*transport.SubscribeOptions)) *transport.Subscription {
	e.t.Helper()
	o := transport.SubscribeOptions{Group: group, Consumer: consumer}
	for _, m := range opts {
		m(&o)
	}
	sub, err := b.Subscribe(context.Background(), e.stream, h, o)
	require.NoError(e.t, err, "Subscribe")
	e.t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// testPayload is the payload of TestSchema.
type testPayload struct {
	N   int    `json:"n"`
	Pad string `json:"pad"`
}

// testSchemas registers TestSchema (validated), the Python fixtures' schemas and the
// feedback schemas (accepting any object).
func testSchemas() *envelope.Schemas {
	s := envelope.NewSchemas()
	s.Register(TestSchema, func(b []byte) error {
		var p struct {
			N *int `json:"n"`
		}
		if err := json.Unmarshal(b, &p); err != nil {
			return err
		}
		if p.N == nil || *p.N < 0 {
			return errors.New(`"n" must be an integer ≥ 0`)
		}
		return nil
	})
	s.Register("telemetry.FeedbackEvent", nil)
	s.Register("telemetry.RateAdjustment", nil)
	return s
}

// pad makes a message of about 200 bytes on the wire.
var pad = strings.Repeat("x", 64)

// envelopes returns messages n = from … from+count-1 of TestSchema, with a key and headers.
func envelopes(from, count int) []*envelope.Envelope {
	out := make([]*envelope.Envelope, count)
	for i := range out {
		n := from + i
		key := fmt.Sprintf("k-%d", n)
		p, _ := json.Marshal(testPayload{N: n, Pad: pad})
		out[i] = &envelope.Envelope{
			Key:     &key,
			Meta:    envelope.Meta{SchemaID: TestSchema, Headers: map[string]string{"n": fmt.Sprint(n), "note": "héllo \"quoted\""}},
			Payload: p,
		}
	}
	return out
}

// publish publishes messages from … from+count-1 in batches of at most batch.
func (e *env) publish(b *transport.Bus, from, count, batch int) []*envelope.Envelope {
	e.t.Helper()
	envs := envelopes(from, count)
	for i := 0; i < len(envs); i += batch {
		require.NoError(e.t, b.Publish(e.ctx(), e.stream, envs[i:min(i+batch, len(envs))]...))
	}
	return envs
}

// payloadN is the n of a TestSchema delivery, or -1.
func payloadN(d *transport.Delivery) int {
	var p testPayload
	if err := json.Unmarshal(d.Envelope.Payload, &p); err != nil {
		return -1
	}
	return p.N
}

// handled is one delivery as a collector saw it.
type handled struct {
	N           int
	Attempt     int
	TransportID string
	ID          string
	Member      string
}

// collector records the deliveries handlers saw. Safe for concurrent use.
type collector struct {
	mu    sync.Mutex
	calls []handled
	byN   map[int][]handled
}

func newCollector() *collector { return &collector{byN: map[int][]handled{}} }

func (c *collector) add(member string, d *transport.Delivery) handled {
	h := handled{N: payloadN(d), Attempt: d.Attempt, TransportID: d.TransportID, ID: d.ID(), Member: member}
	c.mu.Lock()
	c.calls = append(c.calls, h)
	c.byN[h.N] = append(c.byN[h.N], h)
	c.mu.Unlock()
	return h
}

// handler records each delivery as member and then returns then(d) (nil = success).
func (c *collector) handler(member string, then func(ctx context.Context, d *transport.Delivery, h handled) error) transport.Handler {
	return func(ctx context.Context, d *transport.Delivery) error {
		h := c.add(member, d)
		if then == nil {
			return nil
		}
		return then(ctx, d, h)
	}
}

// distinct is how many different n were seen.
func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byN)
}

// total is how many handler calls there were.
func (c *collector) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls)
}

// of returns the deliveries of n.
func (c *collector) of(n int) []handled {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.byN[n])
}

// members returns, per member, the set of n it handled.
func (c *collector) members() map[string]map[int]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[int]bool{}
	for _, h := range c.calls {
		if out[h.Member] == nil {
			out[h.Member] = map[int]bool{}
		}
		out[h.Member][h.N] = true
	}
	return out
}

// multiples lists the n handled more than once.
func (c *collector) multiples() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for n, hs := range c.byN {
		if len(hs) > 1 {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// eventually waits for cond with the harness timeout.
func (e *env) eventually(cond func() bool, msg string, args ...any) {
	e.t.Helper()
	require.Eventually(e.t, cond, e.timeout(), tick, append([]any{msg}, args...)...)
}

// quietFor fails if cond becomes true within d: used to show that something does NOT happen
// (a dead-lettered message is not delivered again), over a bounded window.
func (e *env) quietFor(d time.Duration, cond func() bool, msg string, args ...any) {
	e.t.Helper()
	require.Never(e.t, cond, d, tick, append([]any{msg}, args...)...)
}

// deadLetter is one DLQ entry as read back from the broker.
type deadLetter struct {
	Body        []byte
	Headers     map[string]string
	TransportID string
}

// readDLQ reads exactly n entries of the test stream's DLQ through a driver subscription of a
// fresh group (which works on every driver) and checks that no more follow.
func (e *env) readDLQ(n int) []deadLetter {
	e.t.Helper()
	drv := e.openDriver(e.config())
	sub, err := drv.Subscribe(e.ctx(), e.stream+transport.DLQSuffix, driver.SubscribeOptions{
		Group: e.name("dlqreader"), Consumer: "r", AckWait: e.ackWait(), MaxDeliveries: 100, BatchSize: 64,
	})
	require.NoError(e.t, err, "subscribe to the DLQ")
	defer sub.Close()
	ctx, cancel := context.WithTimeout(e.ctx(), e.timeout())
	defer cancel()
	var out []deadLetter
	for len(out) < n {
		batch, err := sub.Receive(ctx, n-len(out))
		require.NoError(e.t, err, "reading the DLQ: %d of %d entries", len(out), n)
		for _, d := range batch {
			out = append(out, deadLetter{Body: slices.Clone(d.Body), Headers: maps.Clone(d.HeaderMap()), TransportID: d.TransportID})
		}
		require.NoError(e.t, sub.Ack(ctx, batch))
	}
	// Nothing more.
	short, cancelShort := context.WithTimeout(e.ctx(), e.ackWait())
	defer cancelShort()
	extra, err := sub.Receive(short, 10)
	require.Empty(e.t, extra, "the DLQ holds more than %d entries", n)
	require.ErrorIs(e.t, err, context.DeadlineExceeded)
	return out
}

// admin returns the StreamAdmin of a fresh driver, or nil when the driver has none.
func (e *env) admin() driver.StreamAdmin {
	e.t.Helper()
	a, _ := e.openDriver(e.config()).(driver.StreamAdmin)
	return a
}

// requirePendingZero checks, where the driver can tell, that group has nothing unsettled.
func (e *env) requirePendingZero(group string) {
	e.t.Helper()
	admin := e.admin()
	if admin == nil {
		return
	}
	require.EventuallyWithT(e.t, func(c *assert.CollectT) {
		info, err := admin.Info(e.ctx(), e.stream, group)
		require.NoError(c, err)
		require.Zero(c, info.Pending, "group %s should have nothing pending", group)
	}, e.timeout(), tick)
}
