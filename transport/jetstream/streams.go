package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
)

// ErrNameCollision is returned when the JetStream stream a logical stream maps to already
// stores a different subject (see StreamName).
var ErrNameCollision = errors.New("jetstream: stream name collision")

func checkStream(stream string) error {
	if !transport.ValidStreamName(stream) {
		return fmt.Errorf("jetstream: invalid stream name %q (accepted: dot-separated tokens of letters, digits, '_' and '-')", stream)
	}
	return nil
}

// streamConfig is the configuration every logical stream (dead-letter streams included) is
// created or updated with: file storage, limits retention (every group sees every message),
// the configured max age, bytes, length and replicas, a duplicate window of at most the max
// age, and batch publishing allowed.
func (d *Driver) streamConfig(stream string) jetstream.StreamConfig {
	unlimited := func(v int64) int64 {
		if v <= 0 {
			return -1
		}
		return v
	}
	return jetstream.StreamConfig{
		Name:        StreamName(d.cfg.Namespace, stream),
		Description: "pulse stream " + stream,
		Subjects:    []string{Subject(d.cfg.Namespace, stream)},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		Replicas:    d.cfg.Replicas,
		MaxAge:      d.cfg.StreamMaxAge,
		MaxBytes:    unlimited(d.cfg.StreamMaxBytes),
		MaxMsgs:     unlimited(d.cfg.StreamMaxLen),
		Duplicates:  min(DefaultDuplicateWindow, d.cfg.StreamMaxAge),
		AllowDirect: true,
		// Fast-batch publishing (Send); a server older than 2.12 ignores it, and reports it
		// unset, which is how Send knows to publish asynchronously.
		AllowBatchPublish: true,
	}
}

// ensureStream creates or updates the JetStream stream of a logical stream, once per driver
// (again after forgetStream).
func (d *Driver) ensureStream(ctx context.Context, stream string) (jetstream.Stream, error) {
	d.streamsMu.Lock()
	st, ok := d.streams[stream]
	d.streamsMu.Unlock()
	if ok {
		return st, nil
	}
	cfg := d.streamConfig(stream)
	actx, cancel := apiCtx(ctx)
	defer cancel()
	existing, err := d.js.Stream(actx, cfg.Name)
	switch {
	case err == nil:
		subjects := existing.CachedInfo().Config.Subjects
		if !slices.Contains(subjects, cfg.Subjects[0]) {
			return nil, fmt.Errorf("%w: %s (for %s) already stores subjects %v, not %s; rename one of the logical streams",
				ErrNameCollision, cfg.Name, stream, subjects, cfg.Subjects[0])
		}
		cfg.Subjects = subjects // keep subjects an operator added
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, d.wrap(ctx, "stream "+cfg.Name, err)
	}
	st, err = d.js.CreateOrUpdateStream(actx, cfg)
	if err != nil {
		return nil, d.wrap(ctx, "create or update stream "+cfg.Name, err)
	}
	d.streamsMu.Lock()
	d.streams[stream] = st
	d.streamsMu.Unlock()
	return st, nil
}

// forgetStream makes the next use ensure the stream again (it was deleted, or its leader is
// gone).
func (d *Driver) forgetStream(stream string) {
	d.streamsMu.Lock()
	delete(d.streams, stream)
	d.streamsMu.Unlock()
}

// lookupStream returns the stream if it exists (without creating it); nil, nil if not.
func (d *Driver) lookupStream(ctx context.Context, stream string) (jetstream.Stream, error) {
	actx, cancel := apiCtx(ctx)
	defer cancel()
	st, err := d.js.Stream(actx, StreamName(d.cfg.Namespace, stream))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, d.wrap(ctx, "stream "+StreamName(d.cfg.Namespace, stream), err)
	}
	return st, nil
}
