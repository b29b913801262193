package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// The consumer process of TestConsumerKilledMidBatch is this test binary re-executed with
// childEnv set; TestMain then runs runChild instead of the tests.
const (
	childEnv       = "PULSE_REDIS_TEST_CHILD"
	childURLEnv    = "PULSE_REDIS_TEST_URL"
	childNSEnv     = "PULSE_REDIS_TEST_NS"
	childBlockEnv  = "PULSE_REDIS_TEST_BLOCK_AT"
	childBatchSize = 20
	workStream     = "work"
)

// applied records that the message with producer id was applied, in a Redis set shared by
// every process; applying one twice is counted in `{ns}:applied-twice`. It is the observable
// effect of the handlers below.
func applied(ctx context.Context, c *goredis.Client, ns, id string) error {
	n, err := c.SAdd(ctx, ns+":applied", id).Result()
	if err != nil {
		return err
	}
	if n == 0 {
		return c.Incr(ctx, ns+":applied-twice").Err()
	}
	return nil
}

// workConfig is the configuration of both processes: v2 ids and the shared idempotency record
// in Redis (SET NX PX), as replicas of the feedback consumer would run.
func workConfig(url, ns string) transport.Config {
	return transport.Config{
		Backend:           Name,
		RedisURL:          url,
		Namespace:         ns,
		Track:             envelope.TrackV2,
		SharedIdempotency: true,
		AckWait:           300 * time.Millisecond,
		BatchSize:         childBatchSize,
	}
}

// runChild is the consumer process: it takes one batch and applies messages until the
// blockAt-th, where it announces itself (`{ns}:child-blocked`) and hangs until it is killed.
func runChild() int {
	ns, url := os.Getenv(childNSEnv), os.Getenv(childURLEnv)
	blockAt, err := strconv.Atoi(os.Getenv(childBlockEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	ctx := context.Background()
	cfg := workConfig(url, ns)
	cfg.Consumer = "doomed"
	b, err := transport.Open(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	opts, _ := goredis.ParseURL(url)
	c := goredis.NewClient(opts)
	var handled atomic.Int64
	_, err = b.Subscribe(ctx, workStream, func(ctx context.Context, d *transport.Delivery) error {
		if handled.Add(1) == int64(blockAt) {
			c.Set(ctx, ns+":child-blocked", d.ID(), 0)
			select {} // hangs mid-batch until SIGKILL
		}
		return applied(ctx, c, ns, d.ID())
	}, transport.SubscribeOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	select {} // until SIGKILL
}

// countingObserver counts duplicates and redeliveries.
type countingObserver struct {
	duplicates, redeliveries atomic.Int64
}

func (o *countingObserver) Published(string, string, error, time.Duration) {}
func (o *countingObserver) Consumed(_, _ string, outcome transport.Outcome) {
	if outcome == transport.OutcomeDuplicate {
		o.duplicates.Add(1)
	}
}
func (o *countingObserver) Redelivered(string)          { o.redeliveries.Add(1) }
func (o *countingObserver) DeadLettered(string, string) {}
func (o *countingObserver) Lag(string, time.Duration)   {}

// TestConsumerKilledMidBatch proves at-least-once across a crashed process without double
// application: a consumer process takes a batch, applies part of it (recorded as done in the
// shared idempotency record, but not yet acknowledged) and is killed with SIGKILL while
// handling the next message. A member in this process then claims the dead member's pending
// entries after AckWait (XAUTOCLAIM) and finishes them: every message is applied, none twice,
// and the ones the dead process had applied are recognised as duplicates, not re-applied.
func TestConsumerKilledMidBatch(t *testing.T) {
	// The dead member holds its batch and the readAhead batches it read ahead; the rest of the
	// stream it never read.
	const held, blockAt = (1 + readAhead) * childBatchSize, 10
	const total = held + childBatchSize
	url := redisSrv.Server(t).URL()
	ns := uniqueNS(t)
	ctx := context.Background()
	c := rawClient(t, url)

	pub := openBus(t, workConfig(url, ns))
	envs := make([]*envelope.Envelope, total)
	for i := range envs {
		envs[i] = &envelope.Envelope{Meta: envelope.Meta{SchemaID: "work.Item"}, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	}
	require.NoError(t, pub.Publish(ctx, workStream, envs...))

	out, err := os.Create(filepath.Join(t.TempDir(), "child.log"))
	require.NoError(t, err)
	defer out.Close()
	output := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=1", childURLEnv+"="+url, childNSEnv+"="+ns, childBlockEnv+"="+strconv.Itoa(blockAt))
	child.Stdout, child.Stderr = out, out
	require.NoError(t, child.Start())
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	t.Cleanup(func() {
		_ = child.Process.Kill()
		<-exited
	})

	require.Eventually(t, func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("consumer process exited early (%v): %s", err, output())
		default:
		}
		return c.Exists(ctx, ns+":child-blocked").Val() == 1
	}, waitFor, 10*time.Millisecond, "the consumer process never reached its blocking message")
	require.EqualValues(t, blockAt-1, c.SCard(ctx, ns+":applied").Val())
	require.Eventually(t, func() bool {
		pending, err := c.XPending(ctx, ns+":"+workStream, transport.DefaultGroup).Result()
		return err == nil && pending.Count == held
	}, waitFor, 10*time.Millisecond, "the dead member holds its batch and the ones it read ahead")

	require.NoError(t, child.Process.Signal(syscall.SIGKILL))
	err = <-exited
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal())
	exited <- err

	obs := &countingObserver{}
	cfg := workConfig(url, ns)
	cfg.Consumer = "rescuer"
	cfg.Observer = obs
	rescuer := openBus(t, cfg)
	var mu sync.Mutex
	attempts := map[string]int{}
	_, err = rescuer.Subscribe(ctx, workStream, func(ctx context.Context, d *transport.Delivery) error {
		mu.Lock()
		attempts[d.ID()] = d.Attempt
		mu.Unlock()
		return applied(ctx, c, ns, d.ID())
	}, transport.SubscribeOptions{})
	require.NoError(t, err)

	admin := rescuer.Driver().(driver.StreamAdmin)
	require.Eventually(t, func() bool {
		info, err := admin.Info(ctx, workStream, transport.DefaultGroup)
		return err == nil && info.Pending == 0 && info.Unread == 0 && c.SCard(ctx, ns+":applied").Val() == total
	}, waitFor, 10*time.Millisecond, "not every message was finished")
	twice, err := c.Get(ctx, ns+":applied-twice").Int()
	if !errors.Is(err, goredis.Nil) {
		require.NoError(t, err)
	}
	require.Zero(t, twice, "a message was applied twice")
	require.EqualValues(t, blockAt-1, obs.duplicates.Load(), "the dead process's applied messages are recognised, not re-applied")
	require.EqualValues(t, held, obs.redeliveries.Load(), "everything the dead member held is redelivered")
	mu.Lock()
	defer mu.Unlock()
	blocked := c.Get(ctx, ns+":child-blocked").Val()
	require.Equal(t, 2, attempts[blocked], "the message the process died on is its second attempt")
}

// TestRedisRestartMidStream proves recovery from Redis going away: while it is down, Ping and
// Publish fail with errors wrapping transport.ErrUnavailable and the subscription reports the
// error; once it is back on the same port (empty: the test server has no persistence), the
// group is recreated and publishing and consuming resume by themselves. Nothing handled
// before the crash is lost, and everything published after it is consumed.
func TestRedisRestartMidStream(t *testing.T) {
	srv := redistest.StartT(t)
	cfg := testConfig(t)
	cfg.RedisURL = srv.URL()
	cfg.Track = envelope.TrackV2
	cfg.AckWait = 500 * time.Millisecond
	logs := &recordingHandler{}
	cfg.Logger = slog.New(logs)
	ctx := context.Background()
	b := openBus(t, cfg)

	var mu sync.Mutex
	handled := map[int]bool{}
	s, err := b.Subscribe(ctx, "s", func(_ context.Context, d *transport.Delivery) error {
		var n int
		if _, err := fmt.Sscanf(string(d.Envelope.Payload), `{"n":%d}`, &n); err != nil {
			return transport.Poison("bad_payload", err)
		}
		mu.Lock()
		handled[n] = true
		mu.Unlock()
		return nil
	}, transport.SubscribeOptions{})
	require.NoError(t, err)
	msg := func(n int) *envelope.Envelope {
		return &envelope.Envelope{Meta: envelope.Meta{SchemaID: "x"}, Payload: []byte(fmt.Sprintf(`{"n":%d}`, n))}
	}
	handledAll := func(from, to int) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for n := from; n < to; n++ {
				if !handled[n] {
					return false
				}
			}
			return true
		}
	}

	for n := range 100 {
		require.NoError(t, b.Publish(ctx, "s", msg(n)))
	}
	require.Eventually(t, handledAll(0, 100), waitFor, 10*time.Millisecond)

	require.NoError(t, srv.Kill())
	require.ErrorIs(t, b.Ping(ctx), transport.ErrUnavailable)
	require.ErrorIs(t, b.Publish(ctx, "s", msg(-1)), transport.ErrUnavailable)
	require.Eventually(t, func() bool { return errors.Is(s.Err(), transport.ErrUnavailable) }, waitFor, 10*time.Millisecond,
		"the subscription reports that Redis is away")

	require.NoError(t, srv.Restart())
	require.Eventually(t, func() bool { return b.Ping(ctx) == nil }, waitFor, 10*time.Millisecond)
	for n := 100; n < 200; n++ {
		require.NoError(t, b.Publish(ctx, "s", msg(n)), "publishing resumes by itself")
	}
	require.Eventually(t, handledAll(100, 200), waitFor, 10*time.Millisecond, "consuming resumes by itself")
	require.NoError(t, s.Err())
	require.True(t, logs.contains("consumer group missing"), "the group was recreated on NOGROUP")
	require.True(t, handledAll(0, 100)(), "what was handled before the crash stays handled")
	info, err := b.Driver().(driver.StreamAdmin).Info(ctx, "s", transport.DefaultGroup)
	require.NoError(t, err)
	require.EqualValues(t, 100, info.Length, "the restarted server holds only what came after")
	require.Eventually(t, func() bool {
		info, err := b.Driver().(driver.StreamAdmin).Info(ctx, "s", transport.DefaultGroup)
		return err == nil && info.Pending == 0
	}, waitFor, 10*time.Millisecond)
}
