package feedback_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/internal/pyfixtures"
	"github.com/pulse-bus/pulse/telemetry"
	"github.com/pulse-bus/pulse/transport"
)

// Compile-time proof that the transport bus publishes adjustments and telemetry records the
// feedback metrics.
var (
	_ feedback.Publisher = (*transport.Bus)(nil)
	_ feedback.Observer  = (*telemetry.Metrics)(nil)
)

// readFixture returns a Python fixture's message body (internal/pyfixtures).
func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	return pyfixtures.Message(name)
}

// TestParseLevel proves the three wire names parse, anything else is refused with the accepted
// values named, and State gives the gauge values 0/1/2.
func TestParseLevel(t *testing.T) {
	tests := []struct {
		in    string
		want  feedback.Level
		state int
		err   bool
	}{
		{"ok", feedback.LevelOK, 0, false},
		{"soft", feedback.LevelSoft, 1, false},
		{"hard", feedback.LevelHard, 2, false},
		{"HARD", "", -1, true},
		{"", "", -1, true},
		{"critical", "", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := feedback.ParseLevel(tt.in)
			if tt.err {
				require.Error(t, err)
				require.Contains(t, err.Error(), "accepted: ok, soft, hard")
				require.Equal(t, -1, feedback.Level(tt.in).State())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.state, got.State())
		})
	}
}

// TestEventPayloadMatchesPython proves an Event encodes, through the v1 codec, to exactly the
// bytes the Python core wrote for the same event (field order, float repr, spacing, hash).
func TestEventPayloadMatchesPython(t *testing.T) {
	for _, name := range []string{"v1-feedback-hard.json", "v1-feedback-ok-null-key.json"} {
		t.Run(name, func(t *testing.T) {
			wire := readFixture(t, name)
			codec := &envelope.Codec{Schemas: feedback.Schemas()}
			in, err := codec.Decode(wire)
			require.NoError(t, err)
			ev, err := feedback.ParseEvent(in)
			require.NoError(t, err)

			out, err := ev.Envelope(nil)
			require.NoError(t, err)
			out.TS, out.Key = in.TS, in.Key
			got, err := codec.Encode(out)
			require.NoError(t, err)
			require.Equal(t, string(wire), string(got))
		})
	}
}

// TestRateAdjustmentPayloadMatchesPython proves the same for a RateAdjustment.
func TestRateAdjustmentPayloadMatchesPython(t *testing.T) {
	wire := readFixture(t, "v1-rate-adjustment.json")
	codec := &envelope.Codec{Schemas: feedback.Schemas()}
	in, err := codec.Decode(wire)
	require.NoError(t, err)
	adj, err := feedback.ParseRateAdjustment(in)
	require.NoError(t, err)
	require.Equal(t, feedback.RateAdjustment{Provider: "ibkr", Scale: 0.5, Reason: feedback.LevelSoft, TS: 1760812346.5}, adj)

	out, err := adj.Envelope()
	require.NoError(t, err)
	require.Equal(t, "ibkr", out.KeyOf())
	out.TS = in.TS
	got, err := codec.Encode(out)
	require.NoError(t, err)
	require.Equal(t, string(wire), string(got))
}

// TestDoubleWrappedFixtureParses proves the Python Store's double-wrapped message yields the
// inner event, with the headers that survive only inside.
func TestDoubleWrappedFixtureParses(t *testing.T) {
	codec := &envelope.Codec{Schemas: feedback.Schemas()}
	env, err := codec.Decode(readFixture(t, "v1-store-double-wrapped.json"))
	require.NoError(t, err)
	ev, err := feedback.ParseEvent(env)
	require.NoError(t, err)
	require.Equal(t, feedback.Event{CoordinatorID: "bars_1", QueueSize: 85, Capacity: 100,
		Level: feedback.LevelSoft, Source: "store", TS: 1760812500.05}, ev)
	require.Equal(t, "high_watermark", env.Header(feedback.HeaderReason))
	require.Equal(t, "0.850000", env.Header(feedback.HeaderUtilization))
}

// TestEventValidation proves the FeedbackEvent validator enforces docs/contract.md §3, ignores
// unknown fields, defaults source, and says what was wrong.
func TestEventValidation(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		errHas  string // "" = valid
		source  string
	}{
		{"valid", `{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","source":"store","ts":1.5}`, "", "store"},
		{"unknown fields ignored", `{"coordinator_id":"c","queue_size":3,"capacity":10,"level":"soft","source":"x","ts":1,"reason":"r","extra":{"a":1}}`, "", "x"},
		{"source defaults", `{"coordinator_id":"c","queue_size":3,"capacity":10,"level":"hard","ts":1}`, "", "store"},
		{"whole float int accepted", `{"coordinator_id":"c","queue_size":3.0,"capacity":10,"level":"hard","ts":1}`, "", "store"},
		{"empty coordinator", `{"coordinator_id":"","queue_size":0,"capacity":1,"level":"ok","ts":1}`, "coordinator_id", ""},
		{"negative queue", `{"coordinator_id":"c","queue_size":-1,"capacity":1,"level":"ok","ts":1}`, "queue_size", ""},
		{"fractional queue", `{"coordinator_id":"c","queue_size":1.5,"capacity":1,"level":"ok","ts":1}`, "queue_size", ""},
		{"zero capacity", `{"coordinator_id":"c","queue_size":0,"capacity":0,"level":"ok","ts":1}`, "capacity", ""},
		{"bad level", `{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"HARD","ts":1}`, "accepted: ok, soft, hard", ""},
		{"missing fields", `{"coordinator_id":"c"}`, "lacks [queue_size capacity level ts]", ""},
		{"null level", `{"coordinator_id":"c","queue_size":0,"capacity":1,"level":null,"ts":1}`, "lacks [level]", ""},
		{"negative ts", `{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","ts":-1}`, "ts", ""},
		{"wrong type", `{"coordinator_id":5,"queue_size":0,"capacity":1,"level":"ok","ts":1}`, "coordinator_id", ""},
		{"not an object", `[1,2]`, "FeedbackEvent payload", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := requirePayload(t, feedback.SchemaFeedbackEvent, tt.payload, tt.errHas, feedback.ParseEventPayload)
			if tt.errHas == "" {
				require.Equal(t, tt.source, ev.Source)
			}
		})
	}
}

// TestRateAdjustmentValidation proves the RateAdjustment validator enforces scale in [0,1],
// the reason levels and required fields.
func TestRateAdjustmentValidation(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		errHas  string
	}{
		{"valid", `{"provider":"ibkr","scale":0.0,"reason":"hard","ts":2}`, ""},
		{"scale one", `{"provider":"ibkr","scale":1,"reason":"ok","ts":2,"other":true}`, ""},
		{"scale above one", `{"provider":"ibkr","scale":1.01,"reason":"ok","ts":2}`, "from 0 to 1"},
		{"negative scale", `{"provider":"ibkr","scale":-0.1,"reason":"ok","ts":2}`, "from 0 to 1"},
		{"bad reason", `{"provider":"ibkr","scale":0.5,"reason":"high_watermark","ts":2}`, "reason"},
		{"empty provider", `{"provider":"","scale":0.5,"reason":"soft","ts":2}`, "provider"},
		{"missing scale", `{"provider":"ibkr","reason":"soft","ts":2}`, "lacks [scale]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requirePayload(t, feedback.SchemaRateAdjustment, tt.payload, tt.errHas, feedback.ParseRateAdjustmentPayload)
		})
	}
}

// requirePayload runs parse and the registered validator of schema on payload. With errHas
// set both must refuse it (parse with an error containing errHas, the validator with
// envelope.ErrInvalidPayload); with errHas "" both must accept it. It returns what parse
// returned.
func requirePayload[T any](t *testing.T, schema, payload, errHas string, parse func([]byte) (T, error)) T {
	t.Helper()
	v, err := parse([]byte(payload))
	verr := feedback.Schemas().Validate(schema, []byte(payload))
	if errHas != "" {
		require.ErrorContains(t, err, errHas)
		require.ErrorIs(t, verr, envelope.ErrInvalidPayload)
		return v
	}
	require.NoError(t, err)
	require.NoError(t, verr)
	return v
}

// TestSchemasRegistry proves Schemas knows exactly the two payload schemas and
// RegisterSchemas adds them to an existing registry.
func TestSchemasRegistry(t *testing.T) {
	require.Equal(t, []string{feedback.SchemaFeedbackEvent, feedback.SchemaRateAdjustment}, feedback.Schemas().Known())
	s := envelope.NewSchemas()
	s.Register("other.Schema", nil)
	feedback.RegisterSchemas(s)
	require.Equal(t, []string{"other.Schema", feedback.SchemaFeedbackEvent, feedback.SchemaRateAdjustment}, s.Known())
}

// TestParseEventPoison proves an envelope of another schema or with an invalid payload is a
// poison error with a reason the transport puts on the dead letter.
func TestParseEventPoison(t *testing.T) {
	adj, err := feedback.RateAdjustment{Provider: "ibkr", Scale: 1, Reason: feedback.LevelOK, TS: 1}.Envelope()
	require.NoError(t, err)
	_, err = feedback.ParseEvent(adj)
	require.ErrorIs(t, err, transport.ErrPoison)
	require.True(t, strings.HasPrefix(err.Error(), feedback.ReasonWrongSchema), err.Error())

	bad := &envelope.Envelope{Meta: envelope.Meta{SchemaID: feedback.SchemaFeedbackEvent}, Payload: []byte(`{"coordinator_id":""}`)}
	_, err = feedback.ParseEvent(bad)
	require.ErrorIs(t, err, transport.ErrPoison)
	require.True(t, strings.HasPrefix(err.Error(), feedback.ReasonInvalidPayload), err.Error())

	_, err = feedback.DecodeEvent(&transport.Delivery{Envelope: adj})
	require.ErrorIs(t, err, transport.ErrPoison)
	_, err = feedback.DecodeRateAdjustment(&transport.Delivery{Envelope: adj})
	require.NoError(t, err)
}

// TestEventEnvelope proves the helper keys the envelope by coordinator, copies the headers,
// writes source "store" when unset, and refuses an invalid event.
func TestEventEnvelope(t *testing.T) {
	headers := map[string]string{"reason": "high_watermark"}
	ev := feedback.Event{CoordinatorID: "c<1>", QueueSize: 8, Capacity: 10, Level: feedback.LevelHard, TS: 12.5}
	env, err := ev.Envelope(headers)
	require.NoError(t, err)
	headers["reason"] = "changed"
	require.Equal(t, "c<1>", env.KeyOf())
	require.Equal(t, feedback.SchemaFeedbackEvent, env.Meta.SchemaID)
	require.Equal(t, "high_watermark", env.Header("reason"))
	require.Equal(t, `{"coordinator_id":"c<1>","queue_size":8,"capacity":10,"level":"hard","source":"store","ts":12.5}`, string(env.Payload))

	_, err = feedback.Event{CoordinatorID: "c", Capacity: 10, Level: "bad", TS: 1}.Envelope(nil)
	require.Error(t, err)
	require.False(t, errors.Is(err, transport.ErrPoison))
}
