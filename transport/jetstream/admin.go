package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
)

// Range implements transport.StreamAdmin. It reads the stream's messages by sequence (direct
// get, next message on the stream's subject), one request each, without consuming them. A
// stream that does not exist yet has no messages.
func (d *Driver) Range(ctx context.Context, stream string, limit int, fn func(transport.StoredMessage) error) error {
	if d.closed.Load() {
		return transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return err
	}
	st, err := d.lookupStream(ctx, stream)
	if err != nil || st == nil {
		return err
	}
	subject := Subject(d.cfg.Namespace, stream)
	seq := uint64(1)
	for n := 0; limit <= 0 || n < limit; n++ {
		actx, cancel := apiCtx(ctx)
		raw, err := st.GetMsg(actx, seq, jetstream.WithGetMsgSubject(subject))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return d.wrap(ctx, "read "+StreamName(d.cfg.Namespace, stream), err)
		}
		sm := transport.StoredMessage{
			RawMessage:  transport.RawMessage{Body: raw.Data},
			TransportID: strconv.FormatUint(raw.Sequence, 10),
		}
		if len(raw.Header) > 0 {
			sm.ID, sm.Headers = fromHeader(raw.Header)
		}
		if err := fn(sm); err != nil {
			return err
		}
		seq = raw.Sequence + 1
	}
	return nil
}

func parseSeq(id string) (uint64, error) {
	seq, err := strconv.ParseUint(id, 10, 64)
	if err != nil || seq == 0 {
		return 0, fmt.Errorf("jetstream: invalid transport id %q (accepted: a stream sequence, a positive integer)", id)
	}
	return seq, nil
}

// Delete implements transport.StreamAdmin: transport ids are stream sequences.
func (d *Driver) Delete(ctx context.Context, stream string, transportIDs ...string) error {
	if d.closed.Load() {
		return transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return err
	}
	seqs := make([]uint64, len(transportIDs))
	for i, id := range transportIDs {
		seq, err := parseSeq(id)
		if err != nil {
			return err
		}
		seqs[i] = seq
	}
	st, err := d.lookupStream(ctx, stream)
	if err != nil || st == nil {
		return err
	}
	for _, seq := range seqs {
		actx, cancel := apiCtx(ctx)
		err := st.DeleteMsg(actx, seq)
		cancel()
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			continue
		}
		if err != nil {
			return d.wrap(ctx, fmt.Sprintf("delete %d from %s", seq, StreamName(d.cfg.Namespace, stream)), err)
		}
	}
	return nil
}

// Purge implements transport.StreamAdmin, with the count the server reports.
func (d *Driver) Purge(ctx context.Context, stream string) (int64, error) {
	if d.closed.Load() {
		return 0, transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return 0, err
	}
	st, err := d.lookupStream(ctx, stream)
	if err != nil || st == nil {
		return 0, err
	}
	// The jetstream package's Purge drops the count; ask the API directly.
	actx, cancel := apiCtx(ctx)
	defer cancel()
	name := StreamName(d.cfg.Namespace, stream)
	resp, err := d.nc.RequestWithContext(actx, "$JS.API.STREAM.PURGE."+name, []byte("{}"))
	if err != nil {
		return 0, d.wrap(ctx, "purge "+name, err)
	}
	var pr struct {
		Success bool                `json:"success"`
		Purged  uint64              `json:"purged"`
		Error   *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &pr); err != nil {
		return 0, fmt.Errorf("jetstream: purge %s: invalid response %q: %w", name, resp.Data, err)
	}
	if pr.Error != nil {
		return 0, d.wrap(ctx, "purge "+name, pr.Error)
	}
	return int64(pr.Purged), nil
}

// Info implements transport.StreamAdmin. Pending is the group's unacknowledged deliveries
// and Unread the messages it has not been given yet; a group that does not exist yet would
// be given the whole stream. A stream that does not exist yet is empty.
func (d *Driver) Info(ctx context.Context, stream, group string) (transport.StreamInfo, error) {
	if d.closed.Load() {
		return transport.StreamInfo{}, transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return transport.StreamInfo{}, err
	}
	st, err := d.lookupStream(ctx, stream)
	if err != nil || st == nil {
		return transport.StreamInfo{}, err
	}
	info := transport.StreamInfo{Length: int64(st.CachedInfo().State.Msgs)}
	if group == "" {
		return info, nil
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	cons, err := st.Consumer(actx, DurableName(group))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		info.Unread = info.Length
		return info, nil
	}
	if err != nil {
		return transport.StreamInfo{}, d.wrap(ctx, "consumer "+DurableName(group), err)
	}
	ci := cons.CachedInfo()
	info.Pending = int64(ci.NumAckPending)
	info.Unread = int64(ci.NumPending)
	return info, nil
}
