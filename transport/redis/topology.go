package redis

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	goredis "github.com/redis/go-redis/v9"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
)

// The values of PULSE_REDIS_MODE.
const (
	ModeSingle   = "single"
	ModeCluster  = "cluster"
	ModeSentinel = "sentinel"
)

// DefaultWaitTimeout bounds how long a write waits for PULSE_REDIS_MIN_REPLICAS replicas.
const DefaultWaitTimeout = 2 * time.Second

// setup is how to reach Redis: REDIS_URL read the way PULSE_REDIS_MODE says, with go-redis's
// own URL conventions (ParseURL, ParseClusterURL, ParseFailoverURL).
type setup struct {
	mode     string
	single   *goredis.Options
	cluster  *goredis.ClusterOptions
	failover *goredis.FailoverOptions
}

// CheckConfig checks the Redis settings of cfg (REDIS_URL, PULSE_REDIS_MODE,
// PULSE_REDIS_MIN_REPLICAS, PULSE_REDIS_WAIT_TIMEOUT) without connecting; an error is a
// *envconf.Error naming the setting and what it accepts.
func CheckConfig(cfg transport.Config) error {
	_, err := parseSetup(cfg)
	return err
}

func parseSetup(cfg transport.Config) (setup, error) {
	raw := cfg.RedisURL
	if raw == "" {
		raw = transport.DefaultRedisURL
	}
	mode := cfg.RedisMode
	if mode == "" {
		mode = ModeSingle
	}
	switch {
	case cfg.RedisMinReplicas < 0:
		return setup{}, &envconf.Error{Var: "PULSE_REDIS_MIN_REPLICAS", Value: fmt.Sprint(cfg.RedisMinReplicas), Accepted: "an integer ≥ 0"}
	case cfg.RedisWaitTimeout < 0:
		return setup{}, &envconf.Error{Var: "PULSE_REDIS_WAIT_TIMEOUT", Value: cfg.RedisWaitTimeout.String(), Accepted: "a duration > 0 (default " + DefaultWaitTimeout.String() + ")"}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" || u.Opaque != "" {
		return setup{}, urlError(raw, mode, "")
	}
	q := u.Query()
	s := setup{mode: mode}
	switch mode {
	case ModeSingle:
		if q.Has("addr") || q.Has("master_name") {
			return setup{}, &envconf.Error{Var: "PULSE_REDIS_MODE", Value: mode,
				Accepted: "cluster (REDIS_URL has addr= seed nodes) or sentinel (with master_name=): single reads one server and takes neither parameter"}
		}
		s.single, err = goredis.ParseURL(raw)
	case ModeCluster:
		if q.Has("master_name") {
			return setup{}, &envconf.Error{Var: "PULSE_REDIS_MODE", Value: mode,
				Accepted: "sentinel: REDIS_URL names a Sentinel master (master_name=), which a cluster has not"}
		}
		if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
			return setup{}, urlError(raw, mode, "a cluster has only database 0")
		}
		s.cluster, err = goredis.ParseClusterURL(raw)
	case ModeSentinel:
		if q.Get("master_name") == "" {
			return setup{}, urlError(raw, mode, "sentinel mode needs master_name=NAME, the primary the sentinels monitor")
		}
		s.failover, err = goredis.ParseFailoverURL(raw)
	default:
		return setup{}, &envconf.Error{Var: "PULSE_REDIS_MODE", Value: mode, Accepted: "single, cluster or sentinel"}
	}
	if err != nil {
		return setup{}, urlError(raw, mode, err.Error())
	}
	return s, nil
}

// urlError is REDIS_URL's error for mode, with why when there is more to say.
func urlError(raw, mode, why string) error {
	accepted := map[string]string{
		ModeSingle:   "redis://[user[:password]@]host[:port][/db] or rediss://… (TLS), db a number ≥ 0",
		ModeCluster:  "redis://[user[:password]@]host:port[?addr=host:port&addr=…] or rediss://… (seed nodes of the cluster)",
		ModeSentinel: "redis://[user[:password]@]sentinel:port[/db]?master_name=NAME[&addr=sentinel:port…] or rediss://…",
	}[mode]
	if why != "" {
		accepted += " (" + strings.TrimPrefix(why, "redis: ") + ")"
	}
	return &envconf.Error{Var: "REDIS_URL", Value: transport.RedactURLs(raw), Accepted: accepted + " with PULSE_REDIS_MODE=" + mode}
}

// newClient is go-redis's client for s: one server, a cluster, or the primary the sentinels
// name.
func (s setup) newClient() goredis.UniversalClient {
	switch s.mode {
	case ModeCluster:
		return goredis.NewClusterClient(s.cluster)
	case ModeSentinel:
		return goredis.NewFailoverClient(s.failover)
	}
	return goredis.NewClient(s.single)
}

// node is one primary the hot paths write to and read from over the driver's own RESP
// connections: how to dial it, and the pool for publishing and acks.
type node struct {
	opts *goredis.Options
	pool *connPool
}

// router finds the node that owns a key. With one server, and behind Sentinel, there is
// one node (its dialer asks the sentinels for the current primary on every dial); on a
// cluster the node is the primary of the key's slot, as go-redis's topology says.
type router struct {
	cluster *goredis.ClusterClient // nil unless cluster mode
	name    string                 // CLIENT SETNAME of the pools' connections
	single  *node

	mu    sync.Mutex
	nodes map[string]*node // by address (cluster)
}

func newRouter(client goredis.UniversalClient, name string) *router {
	r := &router{name: name, nodes: map[string]*node{}}
	switch c := client.(type) {
	case *goredis.ClusterClient:
		r.cluster = c
	case *goredis.Client:
		opts := c.Options() // with go-redis's defaults filled in: dialer, timeouts, pool size
		r.single = &node{opts: opts, pool: newConnPool(opts, name)}
	}
	return r
}

// nodeFor returns the node that owns key.
func (r *router) nodeFor(ctx context.Context, key string) (*node, error) {
	if r.cluster == nil {
		return r.single, nil
	}
	c, err := r.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, err
	}
	opts := c.Options()
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[opts.Addr]
	if n == nil {
		n = &node{opts: opts, pool: newConnPool(opts, r.name)}
		r.nodes[opts.Addr] = n
	}
	return n, nil
}

// dialOptions returns how to dial the node that owns key (for a subscription's reading
// connection).
func (r *router) dialOptions(ctx context.Context, key string) (*goredis.Options, error) {
	n, err := r.nodeFor(ctx, key)
	if err != nil {
		return nil, err
	}
	return n.opts, nil
}

// moved is called after a reply that says the topology changed (isMoved): on a cluster it
// has go-redis reload the slot map; elsewhere the connection that got it is dropped, and the
// next dial asks the sentinels again.
func (r *router) moved(ctx context.Context) {
	if r.cluster != nil {
		r.cluster.ReloadState(ctx)
	}
}

func (r *router) close() {
	if r.single != nil {
		r.single.pool.close()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.nodes {
		n.pool.close()
	}
}

// isMoved reports a reply that means this node is not (or no longer) where the key is
// written: MOVED and ASK (the slot lives, or is moving, elsewhere), READONLY (a primary
// demoted to replica by a failover), and the transient states of a cluster or a failover.
// The command did nothing; it is sent again once the topology is known.
func isMoved(err error) bool {
	var reply respError
	return errors.As(err, &reply) && (hasPrefix(string(reply), "MOVED ", "ASK ") || hasPrefix(string(reply), transientStates...))
}

// transientStates are the error replies of a server that cannot serve now but will: a
// primary demoted by a failover, a cluster or a failover in progress, a dataset loading.
var transientStates = []string{"READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING"}

// hasPrefix reports whether s starts with one of prefixes.
func hasPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// movedRetryFor bounds how long an operation follows a changing topology (a slot migrating,
// a failover electing a new primary) before it returns the error.
const movedRetryFor = 15 * time.Second

// followMoves runs op on the node that owns key until op returns anything but a topology
// reply (isMoved), for up to movedRetryFor. After MOVED or a transient state it reloads the
// topology and waits with jittered backoff before the next try. After ASK (the slot is
// migrating and the key has gone already) it tries at once on the importing node the reply
// names, with asking set: op must then precede each command with ASKING, which that node
// needs to serve a slot it does not own yet.
func (r *router) followMoves(ctx context.Context, key string, op func(n *node, asking bool) error) error {
	n, err := r.nodeFor(ctx, key)
	if err != nil {
		return err
	}
	if err = op(n, false); !isMoved(err) { // the hot path: no retry state
		return err
	}
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval, retry.MaxInterval = 10*time.Millisecond, 500*time.Millisecond
	giveUp := time.Now().Add(movedRetryFor)
	for {
		if addr, ok := askTarget(err); ok {
			if err = op(r.nodeAt(n, addr), true); !isMoved(err) {
				return err
			}
		}
		if time.Now().After(giveUp) {
			return err
		}
		r.moved(ctx)
		select {
		case <-time.After(retry.NextBackOff()):
		case <-ctx.Done():
			return err
		}
		if n, err = r.nodeFor(ctx, key); err != nil {
			return err
		}
		if err = op(n, false); !isMoved(err) {
			return err
		}
	}
}

// askTarget returns the address an ASK reply ("ASK <slot> <host:port>") names.
func askTarget(err error) (string, bool) {
	var reply respError
	if !errors.As(err, &reply) || !strings.HasPrefix(string(reply), "ASK ") {
		return "", false
	}
	f := strings.Fields(string(reply))
	if len(f) != 3 {
		return "", false
	}
	return f[2], true
}

// nodeAt returns the cluster node at addr, dialed as from is (credentials, TLS, dialer, which
// go-redis gives every node of a cluster alike).
func (r *router) nodeAt(from *node, addr string) *node {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[addr]
	if n == nil {
		opts := *from.opts
		opts.Addr = addr
		n = &node{opts: &opts, pool: newConnPool(&opts, r.name)}
		r.nodes[addr] = n
	}
	return n
}

// replicated runs write (a script on key) and, when PULSE_REDIS_MIN_REPLICAS > 0, WAITs on
// the same connection of key's primary for that many replicas; fewer in time is an error
// wrapping transport.ErrUnavailable (set on the returned command).
func (d *Driver) replicated(ctx context.Context, key string, write func(goredis.Scripter) *goredis.Cmd) *goredis.Cmd {
	if d.minReplicas == 0 {
		return write(d.client)
	}
	var primary *goredis.Client
	if c, ok := d.client.(*goredis.Client); ok {
		primary = c
	} else if c, err := d.nodes.cluster.MasterForKey(ctx, key); err == nil {
		primary = c
	} else {
		cmd := goredis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	// A dedicated connection, so that WAIT counts this write: a pipeline's EVALSHA cannot
	// fall back to EVAL, which Script.Run needs on a fresh server.
	conn := primary.Conn()
	defer conn.Close()
	cmd := write(conn)
	if cmd.Err() != nil {
		return cmd
	}
	if err := d.checkReplicas(conn.Wait(ctx, d.minReplicas, d.waitTimeout).Result()); err != nil {
		cmd.SetErr(err)
	}
	return cmd
}
