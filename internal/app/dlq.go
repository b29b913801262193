package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// ErrNoStreamAdmin is returned when the configured backend cannot inspect streams.
var ErrNoStreamAdmin = errors.New("app: backend cannot inspect streams (no driver.StreamAdmin)")

// deadLetter is one message of a dead-letter stream.
type deadLetter struct {
	driver.StoredMessage
}

func (d deadLetter) header(k string) string { return d.Headers[k] }

// DLQ is the dead-letter tooling over one bus: list, replay and purge the dead letters of a
// source stream. It is safe for concurrent use as far as the bus and the driver are.
type DLQ struct {
	bus   *transport.Bus
	admin driver.StreamAdmin
}

// NewDLQ returns the tooling over bus, or ErrNoStreamAdmin when its driver cannot inspect
// streams.
func NewDLQ(bus *transport.Bus) (*DLQ, error) {
	admin, ok := bus.Driver().(driver.StreamAdmin)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNoStreamAdmin, bus.Config().Backend)
	}
	return &DLQ{bus: bus, admin: admin}, nil
}

// dlqOf returns the dead-letter stream of source (given as S or S.dlq) and the source.
func dlqOf(stream string) (source, dlq string) {
	source = strings.TrimSuffix(stream, transport.DLQSuffix)
	return source, source + transport.DLQSuffix
}

// List returns up to limit (≤ 0: all) dead letters of source, oldest first.
func (q *DLQ) List(ctx context.Context, source string, limit int) ([]deadLetter, error) {
	_, dlq := dlqOf(source)
	var out []deadLetter
	err := q.admin.Range(ctx, dlq, limit, func(m driver.StoredMessage) error {
		out = append(out, deadLetter{m})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("app: list %s: %w", dlq, err)
	}
	return out, nil
}

// Replay re-publishes up to limit (≤ 0: all) dead letters of source, oldest first, to the
// stream each came from (its `stream` header, else source) with their original bytes and a
// replay_of mark beside them (transport.DLQReplayOf: the original id), and
// deletes each from the dead-letter stream only after the broker confirmed the publish. It
// stops at the first error and returns how many were replayed; those not replayed stay in
// the dead-letter stream.
func (q *DLQ) Replay(ctx context.Context, source string, limit int) (int, error) {
	source, dlq := dlqOf(source)
	letters, err := q.List(ctx, source, limit)
	if err != nil {
		return 0, err
	}
	for i, d := range letters {
		target := d.header(transport.DLQStream)
		if target == "" {
			target = source
		}
		if kept := d.header(transport.DLQKeptIn); kept != "" {
			// Too large to copy: the dead letter points at the original, still in its stream.
			original, err := q.kept(ctx, d)
			if err != nil {
				return i, err
			}
			d.Body = original
		}
		// No producer id: a replay must be stored again, not dropped by the broker's
		// duplicate window as a repeat of the original publish. Consumers still de-duplicate
		// on the envelope's own id, which the failed original never recorded as done. The
		// replay_of mark tells consumers the broker's order of the replay is not the
		// original's (a replayed feedback event applies only if its ts is newer).
		// The replay continues the trace the dead letter carries: its publish is a child of the
		// context the delivery failed in.
		replay := transport.RawMessage{Body: d.Body, Headers: map[string]string{transport.DLQReplayOf: orDash(d.header(transport.DLQOriginalID))}}
		if _, err := q.bus.PublishRaw(q.bus.TraceContext(ctx, d.Headers), target, replay); err != nil {
			return i, fmt.Errorf("app: replay %s (dead letter %s) to %s: %w", d.header(transport.DLQOriginalID), d.TransportID, target, err)
		}
		if err := q.admin.Delete(ctx, dlq, d.TransportID); err != nil {
			return i + 1, fmt.Errorf("app: replayed dead letter %s to %s but could not delete it from %s (it would be replayed again): %w", d.TransportID, target, dlq, err)
		}
	}
	return len(letters), nil
}

// Count returns how many dead letters source has.
func (q *DLQ) Count(ctx context.Context, source string) (int64, error) {
	_, dlq := dlqOf(source)
	info, err := q.admin.Info(ctx, dlq, "")
	if err != nil {
		return 0, fmt.Errorf("app: count %s: %w", dlq, err)
	}
	return info.Length, nil
}

// kept reads the original a pointer dead letter (transport.DLQKeptIn) stands for from the
// stream it was kept in, checking it is the same bytes.
func (q *DLQ) kept(ctx context.Context, d deadLetter) ([]byte, error) {
	var p transport.DeadLetterPointer
	if err := json.Unmarshal(d.Body, &p); err != nil || p.KeptIn == "" || p.OriginalID == "" {
		return nil, fmt.Errorf("app: dead letter %s is marked %s but its body is no pointer (%s)", d.TransportID, transport.DLQKeptIn, oneLine(string(d.Body), 80))
	}
	m, err := q.admin.Get(ctx, p.KeptIn, p.OriginalID)
	if err != nil {
		return nil, fmt.Errorf("app: the original of dead letter %s, kept in %s at %s, cannot be read (retention may have removed it): %w", d.TransportID, p.KeptIn, p.OriginalID, err)
	}
	sum := sha256.Sum256(m.Body)
	if len(m.Body) != p.Size || hex.EncodeToString(sum[:]) != p.SHA256 {
		return nil, fmt.Errorf("app: the message at %s in %s is not the original of dead letter %s (%d bytes, SHA-256 %s; expected %d bytes, %s)",
			p.OriginalID, p.KeptIn, d.TransportID, len(m.Body), hex.EncodeToString(sum[:]), p.Size, p.SHA256)
	}
	return slices.Clone(m.Body), nil
}

// Purge drops every dead letter of source and returns how many there were.
func (q *DLQ) Purge(ctx context.Context, source string) (int64, error) {
	_, dlq := dlqOf(source)
	n, err := q.admin.Purge(ctx, dlq)
	if err != nil {
		return 0, fmt.Errorf("app: purge %s: %w", dlq, err)
	}
	return n, nil
}

// printDeadLetters writes a table of dead letters: time, reason, attempts, original id,
// the source stream, this entry's id, the body (its size, or where a message too large to
// copy was kept) and the error.
func printDeadLetters(w io.Writer, letters []deadLetter) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FAILED_AT\tREASON\tATTEMPTS\tORIGINAL_ID\tSTREAM\tDLQ_ID\tBODY\tERROR")
	for _, d := range letters {
		body := fmt.Sprintf("%d bytes", len(d.Body))
		if kept := d.header(transport.DLQKeptIn); kept != "" {
			body = "kept in " + kept
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			orDash(d.header(transport.DLQFailedAt)), orDash(d.header(transport.DLQReason)),
			orDash(d.header(transport.DLQAttempts)), orDash(d.header(transport.DLQOriginalID)),
			orDash(d.header(transport.DLQStream)), d.TransportID, body, orDash(oneLine(d.header(transport.DLQError), 80)))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine flattens s to one line of at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
