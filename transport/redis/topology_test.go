package redis

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/envelope"
	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/transporttest"
)

// failoverWait bounds how long a test waits for a failover and what follows it.
const failoverWait = 60 * time.Second

// TestCheckConfigModes proves each PULSE_REDIS_MODE reads REDIS_URL with go-redis's
// conventions for it, and that a bad combination is an *envconf.Error naming the setting.
func TestCheckConfigModes(t *testing.T) {
	for _, ok := range []transport.Config{
		{RedisURL: "redis://h:6379/2"},
		{RedisURL: "redis://h:7001?addr=h:7002&addr=h:7003", RedisMode: ModeCluster},
		{RedisURL: "redis://h:7001/0", RedisMode: ModeCluster},
		{RedisURL: "redis://h:26379/0?master_name=m&addr=h:26380", RedisMode: ModeSentinel},
		{RedisURL: "redis://h:6379/0", RedisMinReplicas: 1, RedisWaitTimeout: time.Second},
	} {
		require.NoError(t, CheckConfig(ok), "%+v", ok)
	}
	for _, tc := range []struct {
		cfg      transport.Config
		variable string
		says     string
	}{
		{transport.Config{RedisURL: "redis://h:7001?addr=h:7002"}, "PULSE_REDIS_MODE", "cluster"},
		{transport.Config{RedisURL: "redis://h:26379?master_name=m"}, "PULSE_REDIS_MODE", "sentinel"},
		{transport.Config{RedisURL: "redis://h:7001/3", RedisMode: ModeCluster}, "REDIS_URL", "only database 0"},
		{transport.Config{RedisURL: "redis://h:7001?master_name=m", RedisMode: ModeCluster}, "PULSE_REDIS_MODE", "sentinel"},
		{transport.Config{RedisURL: "redis://h:26379/0", RedisMode: ModeSentinel}, "REDIS_URL", "master_name="},
		{transport.Config{RedisURL: "redis://h:6379", RedisMode: "ring"}, "PULSE_REDIS_MODE", "single, cluster or sentinel"},
		{transport.Config{RedisURL: "redis://:pw-SECRET@h:7001?bogus=1", RedisMode: ModeCluster}, "REDIS_URL", "PULSE_REDIS_MODE=cluster"},
		{transport.Config{RedisMinReplicas: -1}, "PULSE_REDIS_MIN_REPLICAS", "≥ 0"},
	} {
		err := CheckConfig(tc.cfg)
		var ce *envconf.Error
		require.ErrorAs(t, err, &ce, "%+v", tc.cfg)
		require.Equal(t, tc.variable, ce.Var, "%+v", tc.cfg)
		require.Contains(t, err.Error(), tc.says)
		require.NotContains(t, err.Error(), "pw-SECRET")
	}
}

// TestConformanceCluster runs the conformance suite on a three-master Redis Cluster: every
// stream, dead-letter stream, idempotency key and bucket on the master of its slot.
func TestConformanceCluster(t *testing.T) {
	c := redistest.StartClusterT(t, 3, 0)
	transporttest.Run(t, transporttest.Harness{
		Open: func(ctx context.Context, cfg transport.Config) (driver.Driver, error) {
			return Open(ctx, cfg)
		},
		Config:  transport.Config{Backend: Name, RedisURL: c.URL(), RedisMode: ModeCluster, Namespace: "conf"},
		AckWait: 300 * time.Millisecond,
		Caps:    transporttest.Capabilities{Persistent: true},
	})
}

// TestClusterStreamOnAnotherNode proves the symptom of the issue is gone: with REDIS_URL
// naming one master only, a stream whose slot another master owns is published and
// consumed (it was MOVED).
func TestClusterStreamOnAnotherNode(t *testing.T) {
	c := redistest.StartClusterT(t, 3, 0)
	ctx := context.Background()
	stream := ""
	for i := 0; stream == ""; i++ { // a stream whose key the seed does not own
		s := "telemetry.feedback" + strconv.Itoa(i)
		owner, err := c.MasterOf(ctx, "onenode:"+s)
		require.NoError(t, err)
		if owner != c.Masters[0] {
			stream = s
		}
	}
	cfg := transport.Config{Backend: Name, RedisURL: "redis://" + c.Masters[0].Addr() + "/0", RedisMode: ModeCluster, Namespace: "onenode", Logger: testLogger(t)}
	b := openBus(t, cfg)
	got := make(chan string, 10)
	_, err := b.Subscribe(ctx, stream, func(_ context.Context, d *transport.Delivery) error {
		got <- *d.Envelope.Key
		return nil
	}, transport.SubscribeOptions{})
	require.NoError(t, err)
	key := "c1"
	require.NoError(t, b.Publish(ctx, stream, &envelope.Envelope{Key: &key, Meta: envelope.Meta{SchemaID: "t"}, Payload: []byte(`{}`)}))
	select {
	case k := <-got:
		require.Equal(t, key, k)
	case <-time.After(waitFor):
		t.Fatal("the message published to a stream on another master was not consumed")
	}
}

// loss runs publishers and a consumer of stream on b while disrupt runs, then checks that
// every publish Publish acknowledged was consumed (at least once) and none dead-lettered.
func loss(t *testing.T, b *transport.Bus, stream string, disrupt func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	seen := map[string]bool{}
	_, err := b.Subscribe(ctx, stream, func(_ context.Context, d *transport.Delivery) error {
		mu.Lock()
		seen[*d.Envelope.Key] = true
		mu.Unlock()
		return nil
	}, transport.SubscribeOptions{})
	require.NoError(t, err)

	var acked []string
	var failed int
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // owned by loss: ends at stop
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key := "m" + strconv.Itoa(i)
			pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
			err := b.Publish(pctx, stream, &envelope.Envelope{Key: &key, Meta: envelope.Meta{SchemaID: "t"}, Payload: []byte(`{}`)})
			pcancel()
			if err != nil {
				failed++
				continue
			}
			acked = append(acked, key)
		}
	}()
	waitSeen := func(n int) {
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(seen) >= n
		}, failoverWait, 20*time.Millisecond)
	}
	waitSeen(50) // flowing before the disruption
	disrupt()
	mu.Lock()
	before := len(seen)
	mu.Unlock()
	waitSeen(before + 50) // flowing again after it
	close(stop)
	<-done
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range acked {
			if !seen[k] {
				return false
			}
		}
		return true
	}, failoverWait, 20*time.Millisecond, "every acknowledged publish is consumed")
	info, err := b.Driver().(driver.StreamAdmin).Info(context.Background(), stream+transport.DLQSuffix, transport.DefaultGroup)
	if err == nil {
		require.Zero(t, info.Length, "nothing dead-lettered")
	}
	t.Logf("%d publishes acknowledged, %d returned an error (not acknowledged), all acknowledged consumed", len(acked), failed)
}

// TestClusterSlotMigration proves a stream survives its slot moving to another master
// mid-stream (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE, as redis-cli --cluster reshard
// does): every acknowledged publish is consumed.
func TestClusterSlotMigration(t *testing.T) {
	c := redistest.StartClusterT(t, 3, 0)
	cfg := transport.Config{Backend: Name, RedisURL: c.URL(), RedisMode: ModeCluster, Namespace: "mig", Logger: testLogger(t), AckWait: time.Second}
	b := openBus(t, cfg)
	const stream = "telemetry.feedback"
	loss(t, b, stream, func() { migrate(t, c, cfg.Namespace+":"+stream) })
}

// migrate moves key's slot from its master to another one.
func migrate(t *testing.T, c *redistest.Cluster, key string) {
	t.Helper()
	startMigration(t, c, key)()
}

// startMigration begins moving key's slot from its master to another one, as redis-cli
// --cluster reshard does: IMPORTING on the target, MIGRATING on the source, then MIGRATE of
// every key in the slot. The slot stays migrating (the source answers ASK for the keys that
// have gone) until the returned finish is called, which assigns it to the target
// (SETSLOT NODE on every master).
func startMigration(t *testing.T, c *redistest.Cluster, key string) (finish func()) {
	t.Helper()
	ctx := context.Background()
	clients := map[string]*goredis.Client{}
	ids := map[string]string{}
	for _, m := range c.Masters {
		cl := goredis.NewClient(&goredis.Options{Addr: m.Addr()})
		t.Cleanup(func() { cl.Close() })
		clients[m.Addr()] = cl
		id, err := cl.Do(ctx, "cluster", "myid").Text()
		require.NoError(t, err)
		ids[m.Addr()] = id
	}
	seed := clients[c.Masters[0].Addr()]
	slot, err := seed.ClusterKeySlot(ctx, key).Result()
	require.NoError(t, err)
	from, err := c.MasterOf(ctx, key)
	require.NoError(t, err)
	to := c.Masters[0]
	if to == from {
		to = c.Masters[1]
	}
	require.NotNil(t, from)
	src, dst := clients[from.Addr()], clients[to.Addr()]
	s := strconv.FormatInt(slot, 10)
	require.NoError(t, dst.Do(ctx, "cluster", "setslot", s, "importing", ids[from.Addr()]).Err())
	require.NoError(t, src.Do(ctx, "cluster", "setslot", s, "migrating", ids[to.Addr()]).Err())
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, int(slot), 100).Result()
		require.NoError(t, err)
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", "127.0.0.1", to.Port(), "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		require.NoError(t, src.Do(ctx, args...).Err())
	}
	return func() {
		for _, cl := range clients {
			require.NoError(t, cl.Do(ctx, "cluster", "setslot", s, "node", ids[to.Addr()]).Err())
		}
		t.Logf("slot %d of %s moved from %s to %s", slot, key, from.Addr(), to.Addr())
	}
}

// TestClusterAskFollowed proves publish and ack follow ASK while a slot is migrating: with the
// stream's key already on the importing master and the slot not yet assigned to it, both
// succeed at once on the importing master (ASKING), rather than waiting for the migration
// to end (it does not end during the test), and nothing is lost once it does.
func TestClusterAskFollowed(t *testing.T) {
	c := redistest.StartClusterT(t, 3, 0)
	ctx := context.Background()
	cfg := transport.Config{Backend: Name, RedisURL: c.URL(), RedisMode: ModeCluster, Namespace: "ask", Logger: testLogger(t)}
	d, err := Open(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	const stream = "telemetry.feedback"
	key := cfg.Namespace + ":" + stream
	sub, err := d.Subscribe(ctx, stream, driver.SubscribeOptions{Group: "g", Consumer: "c1", BatchSize: 10, AckWait: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { sub.Close() })
	msgs := func(n int) []driver.Message {
		ms := make([]driver.Message, n)
		for i := range ms {
			ms[i].Body = []byte(`{"n":` + strconv.Itoa(i) + `}`)
		}
		return ms
	}
	_, err = d.Publish(ctx, stream, msgs(5))
	require.NoError(t, err)
	var got []*driver.Delivery
	for len(got) < 5 {
		ds, err := sub.Receive(ctx, 10)
		require.NoError(t, err)
		got = append(got, ds...)
	}

	finish := startMigration(t, c, key)
	ids, err := d.Publish(ctx, stream, msgs(5))
	require.NoError(t, err, "publish while the slot migrates")
	require.Len(t, ids, 5)
	require.NoError(t, sub.Ack(ctx, got), "ack while the slot migrates")
	finish()

	cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{c.Masters[0].Addr()}})
	t.Cleanup(func() { cc.Close() })
	require.Equal(t, int64(10), cc.XLen(ctx, key).Val(), "every published entry is on the new owner")
	pending, err := cc.XPending(ctx, key, "g").Result()
	require.NoError(t, err)
	require.Zero(t, pending.Count, "the acks reached the new owner")
}

// TestClusterPrimaryFailover proves a stream survives the SIGKILL of its slot's master
// mid-stream, its replica promoted by the cluster, with PULSE_REDIS_MIN_REPLICAS=1 so that
// every acknowledged publish was on the replica too: all of them are consumed.
func TestClusterPrimaryFailover(t *testing.T) {
	c := redistest.StartClusterT(t, 3, 1)
	cfg := transport.Config{Backend: Name, RedisURL: c.URL(), RedisMode: ModeCluster, Namespace: "fo", Logger: testLogger(t),
		AckWait: time.Second, RedisMinReplicas: 1}
	b := openBus(t, cfg)
	const stream = "telemetry.feedback"
	loss(t, b, stream, func() {
		owner := ownerOf(t, c, cfg.Namespace+":"+stream)
		require.NoError(t, owner.Kill())
		t.Logf("killed %s, the master of the stream's slot", owner.Addr())
		require.Eventually(t, func() bool { return ownerOf(t, c, cfg.Namespace+":"+stream) != owner }, failoverWait, 100*time.Millisecond,
			"the cluster promotes the replica")
		// The old master comes back as the new one's replica, so that writes can be
		// replicated again.
		require.NoError(t, owner.Restart())
	})
}

// ownerOf is the master that owns key's slot now.
func ownerOf(t *testing.T, c *redistest.Cluster, key string) *redistest.Server {
	t.Helper()
	s, err := c.MasterOf(context.Background(), key)
	require.NoError(t, err)
	return s
}

// TestSentinelFailover proves the Sentinel case of the issue: with PULSE_REDIS_MIN_REPLICAS=1
// the primary SIGKILLed mid-stream, the replica promoted, publishing and consuming move to
// it by themselves, and every acknowledged publish is consumed, none dead-lettered. (Until
// the old primary is back as a replica a publish cannot be replicated, so it fails.)
func TestSentinelFailover(t *testing.T) {
	set := redistest.StartSentinelT(t)
	cfg := transport.Config{Backend: Name, RedisURL: set.URL(), RedisMode: ModeSentinel, Namespace: "sentinel", Logger: testLogger(t),
		AckWait: time.Second, RedisMinReplicas: 1}
	b := openBus(t, cfg)
	loss(t, b, "telemetry.feedback", func() {
		require.NoError(t, set.Primary.Kill())
		require.Eventually(t, func() bool {
			p, err := set.CurrentPrimary(context.Background())
			return err == nil && p == set.Replica.Addr()
		}, failoverWait, 50*time.Millisecond, "the sentinels promote the replica")
		// The old primary comes back and the sentinels make it the new primary's replica, so
		// that writes can be replicated again.
		require.NoError(t, set.Primary.Restart())
	})
}

// TestMinReplicasRefusesUnreplicated proves PULSE_REDIS_MIN_REPLICAS: with no replica a
// publish and a key-value write wait PULSE_REDIS_WAIT_TIMEOUT and fail with an error that
// names the setting and wraps transport.ErrUnavailable; with a replica they succeed.
func TestMinReplicasRefusesUnreplicated(t *testing.T) {
	cfg := testConfig(t)
	cfg.RedisMinReplicas, cfg.RedisWaitTimeout = 1, 200*time.Millisecond
	d := openDriver(t, cfg)
	ctx := context.Background()
	_, err := d.Publish(ctx, "s", bodies(3))
	require.ErrorIs(t, err, transport.ErrUnavailable)
	require.ErrorContains(t, err, "PULSE_REDIS_MIN_REPLICAS")
	kv, err := d.KeyValue(ctx, "state")
	require.NoError(t, err)
	_, err = kv.Put(ctx, "k", []byte("v"))
	require.ErrorIs(t, err, transport.ErrUnavailable)

	primary := redistest.StartT(t)
	replica, err := redistest.StartReplica(primary)
	require.NoError(t, err)
	t.Cleanup(func() { replica.Close() })
	cfg.RedisURL = primary.URL()
	d2 := openDriver(t, cfg)
	ids, err := d2.Publish(ctx, "s", bodies(3))
	require.NoError(t, err)
	require.Len(t, ids, 3)
	kv2, err := d2.KeyValue(ctx, "state")
	require.NoError(t, err)
	_, err = kv2.Put(ctx, "k", []byte("v"))
	require.NoError(t, err, fmt.Sprint("replica at ", replica.Addr()))
}
