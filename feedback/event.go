package feedback

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// Schema ids of the payloads (docs/contract.md §3).
const (
	SchemaFeedbackEvent  = "telemetry.FeedbackEvent"
	SchemaRateAdjustment = "telemetry.RateAdjustment"
)

// Logical stream names (docs/contract.md §1).
const (
	// StreamFeedback carries FeedbackEvents from the Store to the pipeline.
	StreamFeedback = "telemetry.feedback"
	// StreamRateAdjustment carries the pipeline's applied RateAdjustments to observers.
	StreamRateAdjustment = "telemetry.rate_adjustment"
)

// DefaultSource is an Event's source when the producer names none.
const DefaultSource = "store"

// Poison reasons this package gives transport.Poison (the dead-letter reason header).
const (
	ReasonWrongSchema    = "wrong_schema"
	ReasonInvalidPayload = "invalid_payload"
	// ReasonClockSkew: the event's ts is further ahead of the consumer's clock than
	// Policy.MaxClockSkew allows.
	ReasonClockSkew = "clock_skew"
)

// MaxStringLen bounds each string of a payload (coordinator_id, source, provider), in bytes:
// ids are names, and every one is kept in memory, in /state and in the state store.
const MaxStringLen = 256

// Event is the telemetry.FeedbackEvent payload: one Store coordinator's queue state. Its JSON
// (see Payload) has the fields in the order the Python core writes them:
// coordinator_id, queue_size, capacity, level, source, ts.
type Event struct {
	// CoordinatorID names the Store coordinator (its queue); non-empty.
	CoordinatorID string `json:"coordinator_id"`
	// QueueSize is the queue depth, ≥ 0.
	QueueSize int `json:"queue_size"`
	// Capacity is the queue's capacity, > 0.
	Capacity int `json:"capacity"`
	// Level is the backpressure level.
	Level Level `json:"level"`
	// Source names the producer kind; "" encodes as DefaultSource.
	Source string `json:"source"`
	// TS is when the Store observed this state, seconds since the epoch. Per coordinator,
	// the event with the greatest TS wins.
	TS envelope.Float `json:"ts"`
}

// Validate checks the fields against docs/contract.md §3.
func (e Event) Validate() error {
	switch {
	case e.CoordinatorID == "":
		return errors.New("feedback: coordinator_id is empty (accepted: a non-empty string of at most 256 bytes)")
	case len(e.CoordinatorID) > MaxStringLen:
		return fmt.Errorf("feedback: coordinator_id of %d bytes (accepted: a non-empty string of at most %d bytes)", len(e.CoordinatorID), MaxStringLen)
	case len(e.Source) > MaxStringLen:
		return fmt.Errorf("feedback: source of %d bytes (accepted: a string of at most %d bytes)", len(e.Source), MaxStringLen)
	case e.QueueSize < 0:
		return fmt.Errorf("feedback: queue_size %d is negative (accepted: an integer ≥ 0)", e.QueueSize)
	case e.Capacity <= 0:
		return fmt.Errorf("feedback: capacity %d (accepted: an integer > 0)", e.Capacity)
	case !e.Level.Valid():
		return fmt.Errorf("feedback: level %q (accepted: %s)", e.Level, levelNames())
	}
	return validTS(float64(e.TS))
}

// Payload returns the event's JSON as the Python core writes it (pydantic's compact dump;
// the codec re-spaces it for track v1). Source "" is written as DefaultSource.
func (e Event) Payload() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	if e.Source == "" {
		e.Source = DefaultSource
	}
	return marshalPayload(e)
}

// Envelope returns an envelope carrying the event, keyed by its coordinator id, with a copy
// of headers (which may be nil). TS and ID are left for the codec to fill in at publish.
func (e Event) Envelope(headers map[string]string) (*envelope.Envelope, error) {
	payload, err := e.Payload()
	if err != nil {
		return nil, err
	}
	return newEnvelope(SchemaFeedbackEvent, e.CoordinatorID, headers, payload), nil
}

// RateAdjustment is the telemetry.RateAdjustment payload: a provider's rate scale changed.
type RateAdjustment struct {
	// Provider names the rate-limited provider; non-empty.
	Provider string `json:"provider"`
	// Scale is the applied scale of the provider's base rate, in [0, 1].
	Scale envelope.Float `json:"scale"`
	// Reason is the level that decided the scale.
	Reason Level `json:"reason"`
	// TS is when the change was applied, seconds since the epoch.
	TS envelope.Float `json:"ts"`
}

// Validate checks the fields against docs/contract.md §3.
func (a RateAdjustment) Validate() error {
	switch {
	case a.Provider == "":
		return errors.New("feedback: provider is empty (accepted: a non-empty string of at most 256 bytes)")
	case len(a.Provider) > MaxStringLen:
		return fmt.Errorf("feedback: provider of %d bytes (accepted: a non-empty string of at most %d bytes)", len(a.Provider), MaxStringLen)
	case !validScale(float64(a.Scale)):
		return fmt.Errorf("feedback: scale %v (accepted: a number from 0 to 1)", float64(a.Scale))
	case !a.Reason.Valid():
		return fmt.Errorf("feedback: reason %q (accepted: %s)", a.Reason, levelNames())
	}
	return validTS(float64(a.TS))
}

// Payload returns the adjustment's JSON as the Python core writes it.
func (a RateAdjustment) Payload() ([]byte, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return marshalPayload(a)
}

// Envelope returns an envelope carrying the adjustment, keyed by provider.
func (a RateAdjustment) Envelope() (*envelope.Envelope, error) {
	payload, err := a.Payload()
	if err != nil {
		return nil, err
	}
	return newEnvelope(SchemaRateAdjustment, a.Provider, nil, payload), nil
}

func newEnvelope(schemaID, key string, headers map[string]string, payload []byte) *envelope.Envelope {
	var h map[string]string
	if len(headers) > 0 {
		h = make(map[string]string, len(headers))
		for k, v := range headers {
			h[k] = v
		}
	}
	return &envelope.Envelope{
		Key:     &key,
		Meta:    envelope.Meta{SchemaID: schemaID, Headers: h},
		Payload: payload,
	}
}

// marshalPayload writes v compactly without Go's HTML escaping of <, > and & (Python writes
// them as they are).
func marshalPayload(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("feedback: encode payload: %w", err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'}), nil
}

func validScale(f float64) bool { return f >= 0 && f <= 1 } // false for NaN

func validTS(ts float64) error {
	if math.IsNaN(ts) || math.IsInf(ts, 0) || ts < 0 {
		return fmt.Errorf("feedback: ts %v (accepted: seconds since the epoch, a finite number ≥ 0)", ts)
	}
	return nil
}

// eventWire reads a FeedbackEvent payload, telling missing fields from zero ones. Unknown
// fields (the Python Store's "reason", say) are ignored.
type eventWire struct {
	CoordinatorID *string      `json:"coordinator_id"`
	QueueSize     *json.Number `json:"queue_size"`
	Capacity      *json.Number `json:"capacity"`
	Level         *string      `json:"level"`
	Source        *string      `json:"source"`
	TS            *float64     `json:"ts"`
}

// ParseEventPayload decodes and validates a telemetry.FeedbackEvent payload. A missing or
// empty source becomes DefaultSource.
func ParseEventPayload(payload []byte) (Event, error) {
	var w eventWire
	if err := json.Unmarshal(payload, &w); err != nil {
		return Event{}, fmt.Errorf("feedback: FeedbackEvent payload: %w", err)
	}
	var missing []string
	if w.CoordinatorID == nil {
		missing = append(missing, "coordinator_id")
	}
	if w.QueueSize == nil {
		missing = append(missing, "queue_size")
	}
	if w.Capacity == nil {
		missing = append(missing, "capacity")
	}
	if w.Level == nil {
		missing = append(missing, "level")
	}
	if w.TS == nil {
		missing = append(missing, "ts")
	}
	if len(missing) > 0 {
		return Event{}, fmt.Errorf("feedback: FeedbackEvent payload lacks %v (required: coordinator_id, queue_size, capacity, level, ts)", missing)
	}
	qs, err := intField("queue_size", *w.QueueSize)
	if err != nil {
		return Event{}, err
	}
	capacity, err := intField("capacity", *w.Capacity)
	if err != nil {
		return Event{}, err
	}
	e := Event{
		CoordinatorID: *w.CoordinatorID,
		QueueSize:     qs,
		Capacity:      capacity,
		Level:         Level(*w.Level),
		Source:        DefaultSource,
		TS:            envelope.Float(*w.TS),
	}
	if w.Source != nil && *w.Source != "" {
		e.Source = *w.Source
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

// intField accepts an integer, or a number with no fractional part (pydantic's lax int).
func intField(name string, n json.Number) (int, error) {
	if i, err := strconv.ParseInt(string(n), 10, 0); err == nil {
		return int(i), nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, fmt.Errorf("feedback: %s %s (accepted: an integer)", name, n)
	}
	return int(f), nil
}

type adjustmentWire struct {
	Provider *string  `json:"provider"`
	Scale    *float64 `json:"scale"`
	Reason   *string  `json:"reason"`
	TS       *float64 `json:"ts"`
}

// ParseRateAdjustmentPayload decodes and validates a telemetry.RateAdjustment payload.
func ParseRateAdjustmentPayload(payload []byte) (RateAdjustment, error) {
	var w adjustmentWire
	if err := json.Unmarshal(payload, &w); err != nil {
		return RateAdjustment{}, fmt.Errorf("feedback: RateAdjustment payload: %w", err)
	}
	var missing []string
	for _, f := range []struct {
		name string
		set  bool
	}{{"provider", w.Provider != nil}, {"scale", w.Scale != nil}, {"reason", w.Reason != nil}, {"ts", w.TS != nil}} {
		if !f.set {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return RateAdjustment{}, fmt.Errorf("feedback: RateAdjustment payload lacks %v (required: provider, scale, reason, ts)", missing)
	}
	a := RateAdjustment{
		Provider: *w.Provider,
		Scale:    envelope.Float(*w.Scale),
		Reason:   Level(*w.Reason),
		TS:       envelope.Float(*w.TS),
	}
	if err := a.Validate(); err != nil {
		return RateAdjustment{}, err
	}
	return a, nil
}

// RegisterSchemas adds both payload schemas, with their validators, to s.
func RegisterSchemas(s *envelope.Schemas) {
	s.Register(SchemaFeedbackEvent, func(p []byte) error { _, err := ParseEventPayload(p); return err })
	s.Register(SchemaRateAdjustment, func(p []byte) error { _, err := ParseRateAdjustmentPayload(p); return err })
}

// Schemas returns a new registry holding both payload schemas.
func Schemas() *envelope.Schemas {
	s := envelope.NewSchemas()
	RegisterSchemas(s)
	return s
}

// ParseEvent returns the Event an envelope carries. A different schema_id is a poison error
// with reason ReasonWrongSchema; an invalid payload one with ReasonInvalidPayload.
func ParseEvent(e *envelope.Envelope) (Event, error) {
	return parseEnvelope(e, SchemaFeedbackEvent, ParseEventPayload)
}

// ParseRateAdjustment returns the RateAdjustment an envelope carries, with the errors of
// ParseEvent.
func ParseRateAdjustment(e *envelope.Envelope) (RateAdjustment, error) {
	return parseEnvelope(e, SchemaRateAdjustment, ParseRateAdjustmentPayload)
}

// parseEnvelope parses the payload of e, which must be of schema, with parse.
func parseEnvelope[T any](e *envelope.Envelope, schema string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	if e == nil {
		return zero, transport.Poison(ReasonInvalidPayload, errors.New("feedback: no envelope"))
	}
	if e.Meta.SchemaID != schema {
		return zero, transport.Poison(ReasonWrongSchema,
			fmt.Errorf("feedback: schema_id %q (accepted: %s)", e.Meta.SchemaID, schema))
	}
	v, err := parse(e.Payload)
	if err != nil {
		return zero, transport.Poison(ReasonInvalidPayload, err)
	}
	return v, nil
}

// DecodeEvent returns the Event a delivery carries (see ParseEvent).
func DecodeEvent(d *transport.Delivery) (Event, error) {
	if d == nil {
		return Event{}, transport.Poison(ReasonInvalidPayload, errors.New("feedback: no delivery"))
	}
	return ParseEvent(d.Envelope)
}

// DecodeRateAdjustment returns the RateAdjustment a delivery carries (see ParseRateAdjustment).
func DecodeRateAdjustment(d *transport.Delivery) (RateAdjustment, error) {
	if d == nil {
		return RateAdjustment{}, transport.Poison(ReasonInvalidPayload, errors.New("feedback: no delivery"))
	}
	return ParseRateAdjustment(d.Envelope)
}
