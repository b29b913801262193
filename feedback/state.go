package feedback

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/transport"
)

// StateBucket is the KeyValue bucket (transport.Bus.KeyValue) the loop's state is kept in.
const StateBucket = "feedback-state"

// StateStore keeps the loop's state — each coordinator's last applied event — where a
// restarted process and every replica find it. Implementations are safe for concurrent use.
type StateStore interface {
	// Load calls fn with every stored record and its revision. Records that cannot be read
	// are skipped and counted in the returned number.
	Load(ctx context.Context, fn func(rec CoordinatorRecord, rev uint64) error) (skipped int, err error)
	// Save stores rec unless the store already holds a record of its coordinator at least
	// as new (by CoordinatorRecord.NewerThan): another replica got there first. rev is the
	// revision of the record the caller's state came from — what Save returned for its
	// last write, or Load gave — and 0 when unknown. Save returns the revision of the record
	// it wrote, or 0 when it wrote nothing because the stored one was at least as new (that
	// revision is no token for overwriting the newer record later).
	Save(ctx context.Context, rec CoordinatorRecord, rev uint64) (uint64, error)
	// Delete forgets a coordinator's record: only if its revision is still rev, or whatever
	// it is when rev is 0.
	Delete(ctx context.Context, coordinator string, rev uint64) error
}

// CoordinatorRecord is a coordinator's stored state: its last applied event, where that
// event stood in the broker's order, and the ts of its recent events.
type CoordinatorRecord struct {
	Coordinator string    `json:"coordinator"`
	Level       Level     `json:"level"`
	QueueSize   int       `json:"queue_size"`
	Capacity    int       `json:"capacity"`
	Source      string    `json:"source,omitempty"`
	EventTS     float64   `json:"event_ts"`
	AppliedAt   time.Time `json:"applied_at"`
	// Position is the applied event's transport.Position ("" when unknown).
	Position string `json:"position,omitempty"`
	// Recent holds the ts of the coordinator's last RecentEvents applied events, oldest
	// first, as little-endian float64s (base64 in JSON).
	Recent []byte `json:"recent,omitempty"`
}

// NewerThan reports whether r records a later event than o: by the broker's order when both
// have a position, else by ts.
func (r CoordinatorRecord) NewerThan(o CoordinatorRecord) bool {
	rp, err1 := transport.ParsePosition(r.Position)
	op, err2 := transport.ParsePosition(o.Position)
	if err1 == nil && err2 == nil && !rp.IsZero() && !op.IsZero() {
		return rp.Compare(op) > 0
	}
	return r.EventTS > o.EventTS
}

// validate checks a record read back from a store.
func (r CoordinatorRecord) validate() error {
	ev := Event{CoordinatorID: r.Coordinator, QueueSize: r.QueueSize, Capacity: r.Capacity, Level: r.Level, Source: r.Source, TS: envelope.Float(r.EventTS)}
	if err := ev.Validate(); err != nil {
		return err
	}
	if len(r.Recent)%8 != 0 || len(r.Recent) > 8*RecentEvents {
		return fmt.Errorf("feedback: record of %q: recent of %d bytes (accepted: up to %d float64s)", r.Coordinator, len(r.Recent), RecentEvents)
	}
	_, err := transport.ParsePosition(r.Position)
	return err
}

func encodeRecent(ts []float64) []byte {
	if len(ts) == 0 {
		return nil
	}
	b := make([]byte, 8*len(ts))
	for i, f := range ts {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(f))
	}
	return b
}

func decodeRecent(b []byte) []float64 {
	out := make([]float64, 0, min(len(b)/8+1, RecentEvents))
	for i := 0; i+8 <= len(b); i += 8 {
		out = append(out, math.Float64frombits(binary.LittleEndian.Uint64(b[i:])))
	}
	return out
}

// NewStateStore returns the StateStore of one feedback stream kept in kv (a bucket such as
// StateBucket): one JSON record per coordinator under the key "<stream>/<coordinator>".
// Save is compare-and-set on the record's revision, so replicas writing the same coordinator
// never put an older event over a newer one.
func NewStateStore(kv transport.KeyValue, stream string) StateStore {
	return &kvState{kv: kv, prefix: stream + "/"}
}

// OpenStateStore returns the StateStore of stream on bus, in the bus's StateBucket. It fails
// with an error wrapping transport.ErrNotSupported when the backend keeps no KeyValue.
func OpenStateStore(ctx context.Context, bus *transport.Bus, stream string) (StateStore, error) {
	kv, err := bus.KeyValue(ctx, StateBucket)
	if err != nil {
		return nil, fmt.Errorf("feedback: state store: %w", err)
	}
	return NewStateStore(kv, stream), nil
}

type kvState struct {
	kv     transport.KeyValue
	prefix string
}

// maxSaveRounds bounds the compare-and-set rounds of one Save against concurrent writers.
const maxSaveRounds = 8

func (s *kvState) Load(ctx context.Context, fn func(CoordinatorRecord, uint64) error) (int, error) {
	skipped := 0
	err := s.kv.Range(ctx, func(e transport.KVEntry) error {
		if !strings.HasPrefix(e.Key, s.prefix) {
			return nil
		}
		var rec CoordinatorRecord
		if json.Unmarshal(e.Value, &rec) != nil || rec.Coordinator != e.Key[len(s.prefix):] || rec.validate() != nil {
			skipped++
			return nil
		}
		return fn(rec, e.Revision)
	})
	return skipped, err
}

func (s *kvState) Save(ctx context.Context, rec CoordinatorRecord, rev uint64) (uint64, error) {
	key := s.prefix + rec.Coordinator
	body, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("feedback: encode state of %q: %w", rec.Coordinator, err)
	}
	for range maxSaveRounds {
		var n uint64
		if rev == 0 {
			n, err = s.kv.Create(ctx, key, body)
		} else {
			n, err = s.kv.Update(ctx, key, body, rev)
		}
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, transport.ErrConflict) {
			return 0, fmt.Errorf("feedback: save state of %q: %w", rec.Coordinator, err)
		}
		cur, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, transport.ErrKeyNotFound):
			rev = 0
			continue
		case err != nil:
			return 0, fmt.Errorf("feedback: save state of %q: %w", rec.Coordinator, err)
		}
		var stored CoordinatorRecord
		if json.Unmarshal(cur.Value, &stored) == nil && !rec.NewerThan(stored) {
			return 0, nil // as new or newer already: another replica wrote it
		}
		rev = cur.Revision
	}
	return 0, fmt.Errorf("feedback: save state of %q: still changing after %d rounds of concurrent writes", rec.Coordinator, maxSaveRounds)
}

func (s *kvState) Delete(ctx context.Context, coordinator string, rev uint64) error {
	err := s.kv.Delete(ctx, s.prefix+coordinator, rev)
	if err != nil && !errors.Is(err, transport.ErrConflict) {
		return fmt.Errorf("feedback: delete state of %q: %w", coordinator, err)
	}
	return nil
}
