package jetstream_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// wireTap subscribes to a stream's subject with core NATS and records the reply subject of
// every message published to it (the tests' bodies are never empty): a fast-batch message's
// ends in ".$FI", an asynchronous publish's is an inbox.
type wireTap struct {
	mu      sync.Mutex
	replies []string
}

func tapSubject(t *testing.T, url, subject string) *wireTap {
	t.Helper()
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	w := &wireTap{}
	_, err = nc.Subscribe(subject, func(m *nats.Msg) {
		if len(m.Data) == 0 {
			return // a batch's end-of-batch commit, which the stream does not store
		}
		w.mu.Lock()
		w.replies = append(w.replies, m.Reply)
		w.mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return w
}

// counts returns how many messages the tap saw in all, and how many as fast-batch messages,
// once it has seen at least want.
func (w *wireTap) counts(t *testing.T, want int) (all, fast int) {
	t.Helper()
	require.Eventually(t, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.replies) >= want
	}, 5*time.Second, 5*time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.replies {
		if strings.HasSuffix(r, ".$FI") {
			fast++
		}
	}
	return len(w.replies), fast
}

func bodies(prefix string, n int, withIDs bool) []driver.Message {
	ms := make([]driver.Message, n)
	for i := range ms {
		ms[i].Body = []byte(`{"n":"` + prefix + strconv.Itoa(i) + `"}`)
		if withIDs {
			ms[i].ID = prefix + strconv.Itoa(i)
		}
	}
	return ms
}

func streamLen(t *testing.T, url, name string) uint64 {
	t.Helper()
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := natsjs.New(nc)
	require.NoError(t, err)
	st, err := js.Stream(context.Background(), name)
	require.NoError(t, err)
	return st.CachedInfo().State.Msgs
}

// TestSendUsesFastBatches proves Send publishes a batch as a JetStream fast batch (its
// messages go out with the fast-batch reply subject, not one PubAck inbox each), that
// concurrent callers each get every message confirmed, and that a single message goes the
// asynchronous way.
func TestSendUsesFastBatches(t *testing.T) {
	srv := natsSrv.Server(t)
	ns := uniqueNS("fast")
	d := open(t, config(srv.ClientURL(), ns))
	tap := tapSubject(t, srv.ClientURL(), jetstream.Subject(ns, "s"))
	ctx := context.Background()

	var g errgroup.Group
	const callers, per = 8, 300
	for c := range callers {
		g.Go(func() error { return d.Send(ctx, "s", bodies("c"+strconv.Itoa(c)+"-", per, false)) })
	}
	require.NoError(t, g.Wait())
	require.Equal(t, uint64(callers*per), streamLen(t, srv.ClientURL(), jetstream.StreamName(ns, "s")))
	all, fast := tap.counts(t, callers*per)
	require.Equal(t, callers*per, all)
	require.Equal(t, callers*per, fast, "every message of a batch goes in a fast batch")

	require.NoError(t, d.Send(ctx, "s", bodies("one", 1, false)))
	all, fast = tap.counts(t, callers*per+1)
	require.Equal(t, callers*per+1, all)
	require.Equal(t, callers*per, fast, "a single message is published asynchronously")
}

// TestSendDeduplicatesByMsgID proves a fast batch keeps duplicate detection: messages with
// ids sent again (a retried publish) are stored once.
func TestSendDeduplicatesByMsgID(t *testing.T) {
	srv := natsSrv.Server(t)
	ns := uniqueNS("fastdup")
	d := open(t, config(srv.ClientURL(), ns))
	ctx := context.Background()
	msgs := bodies("id-", 500, true)
	require.NoError(t, d.Send(ctx, "s", msgs))
	require.NoError(t, d.Send(ctx, "s", msgs[100:400]))
	require.Equal(t, uint64(500), streamLen(t, srv.ClientURL(), jetstream.StreamName(ns, "s")))
}

// TestSendFallsBackWhenBatchesAreRefused proves that when the server refuses fast batches
// (an operator turned batch publishing off on the stream) Send detects it, publishes the
// messages asynchronously instead, loses and duplicates nothing, and keeps doing so.
func TestSendFallsBackWhenBatchesAreRefused(t *testing.T) {
	srv := natsSrv.Server(t)
	ns := uniqueNS("fastoff")
	d := open(t, config(srv.ClientURL(), ns))
	ctx := context.Background()
	require.NoError(t, d.Send(ctx, "s", bodies("a-", 10, true))) // creates the stream

	nc, err := nats.Connect(srv.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := natsjs.New(nc)
	require.NoError(t, err)
	st, err := js.Stream(ctx, jetstream.StreamName(ns, "s"))
	require.NoError(t, err)
	cfg := st.CachedInfo().Config
	cfg.AllowBatchPublish = false
	_, err = js.UpdateStream(ctx, cfg)
	require.NoError(t, err)

	tap := tapSubject(t, srv.ClientURL(), jetstream.Subject(ns, "s"))
	require.NoError(t, d.Send(ctx, "s", bodies("b-", 200, true)))
	require.NoError(t, d.Send(ctx, "s", bodies("c-", 200, true)))
	require.Equal(t, uint64(410), streamLen(t, srv.ClientURL(), jetstream.StreamName(ns, "s")))
	all, fast := tap.counts(t, 400)
	require.LessOrEqual(t, fast, 1, "after the refusal of the first, no message goes in a fast batch")
	require.GreaterOrEqual(t, all, 400)
}
