package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// Range implements driver.StreamAdmin. It reads the stream's messages by sequence (direct
// get, next message on the stream's subject), one request each, without consuming them. A
// stream that does not exist yet has no messages.
func (d *Driver) Range(ctx context.Context, stream string, limit int, fn func(driver.StoredMessage) error) error {
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
		sm := driver.StoredMessage{
			Message:     driver.Message{Body: raw.Data},
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

// Delete implements driver.StreamAdmin: transport ids are stream sequences.
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
	name := StreamName(d.cfg.Namespace, stream)
	for _, seq := range seqs {
		// The jetstream package's DeleteMsg flattens the API error; ask the API directly.
		var resp struct {
			Success bool `json:"success"`
		}
		err := d.apiRequest(ctx, "STREAM.MSG.DELETE."+name, map[string]any{"seq": seq, "no_erase": true}, &resp)
		if missingMsg(err) {
			continue
		}
		if err != nil {
			return d.wrap(ctx, fmt.Sprintf("delete %d from %s", seq, name), err)
		}
	}
	return nil
}

// apiRequest sends req as JSON to the JetStream API subject $JS.API.{op} and decodes the
// answer into resp; an error answer is returned as a *jetstream.APIError.
func (d *Driver) apiRequest(ctx context.Context, op string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	msg, err := d.nc.RequestWithContext(actx, "$JS.API."+op, body)
	if err != nil {
		return err
	}
	var apiErr struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &apiErr); err != nil {
		return fmt.Errorf("invalid JetStream API answer %q: %w", msg.Data, err)
	}
	if apiErr.Error != nil {
		return apiErr.Error
	}
	return json.Unmarshal(msg.Data, resp)
}

// jsErrCodeMsgDeleteFailed is the server's JSStreamMsgDeleteFailedF (no constant in nats.go).
const jsErrCodeMsgDeleteFailed jetstream.ErrorCode = 10057

// missingMsg reports whether a delete failed only because the message is not there (already
// deleted, or past the end of the stream).
func missingMsg(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case jetstream.JSErrCodeMessageNotFound:
		return true
	case jsErrCodeMsgDeleteFailed:
		// The server reports its store's ErrStoreMsgNotFound ("no message found") or ErrStoreEOF
		// ("stream store EOF") only in the text.
		d := strings.ToLower(apiErr.Description)
		return strings.Contains(d, "not found") || strings.Contains(d, "no message found") || strings.Contains(d, "eof")
	}
	return false
}

// Purge implements driver.StreamAdmin, with the count the server reports.
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
	name := StreamName(d.cfg.Namespace, stream)
	var pr struct {
		Purged uint64 `json:"purged"`
	}
	if err := d.apiRequest(ctx, "STREAM.PURGE."+name, struct{}{}, &pr); err != nil {
		return 0, d.wrap(ctx, "purge "+name, err)
	}
	return int64(pr.Purged), nil
}

// Info implements driver.StreamAdmin. Pending is the group's unacknowledged deliveries
// and Unread the messages it has not been given yet; a group that does not exist yet would
// be given the whole stream. A stream that does not exist yet is empty.
func (d *Driver) Info(ctx context.Context, stream, group string) (driver.StreamInfo, error) {
	if d.closed.Load() {
		return driver.StreamInfo{}, transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return driver.StreamInfo{}, err
	}
	st, err := d.lookupStream(ctx, stream)
	if err != nil || st == nil {
		return driver.StreamInfo{}, err
	}
	info := driver.StreamInfo{Length: int64(st.CachedInfo().State.Msgs)}
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
		return driver.StreamInfo{}, d.wrap(ctx, "consumer "+DurableName(group), err)
	}
	ci := cons.CachedInfo()
	info.Pending = int64(ci.NumAckPending)
	info.Unread = int64(ci.NumPending)
	return info, nil
}

// Get implements driver.StreamAdmin: one direct get by stream sequence.
func (d *Driver) Get(ctx context.Context, stream, transportID string) (driver.StoredMessage, error) {
	if d.closed.Load() {
		return driver.StoredMessage{}, transport.ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return driver.StoredMessage{}, err
	}
	seq, err := parseSeq(transportID)
	if err != nil {
		return driver.StoredMessage{}, err
	}
	notFound := fmt.Errorf("jetstream: %s has no message %s: %w", StreamName(d.cfg.Namespace, stream), transportID, transport.ErrMessageNotFound)
	st, err := d.lookupStream(ctx, stream)
	if err != nil {
		return driver.StoredMessage{}, err
	}
	if st == nil {
		return driver.StoredMessage{}, notFound
	}
	actx, cancel := apiCtx(ctx)
	defer cancel()
	raw, err := st.GetMsg(actx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return driver.StoredMessage{}, notFound
	}
	if err != nil {
		return driver.StoredMessage{}, d.wrap(ctx, "read "+StreamName(d.cfg.Namespace, stream), err)
	}
	sm := driver.StoredMessage{Message: driver.Message{Body: raw.Data}, TransportID: transportID}
	if len(raw.Header) > 0 {
		sm.ID, sm.Headers = fromHeader(raw.Header)
	}
	return sm, nil
}
