package redistest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// role is what a server is besides a plain redis-server.
type role struct {
	args       []string                      // extra command-line arguments
	clusterBus bool                          // needs its port + 10000 free too
	sentinel   func(*Server) (string, error) // writes (once) and returns a sentinel's config file
}

// formTimeout bounds how long a cluster or a sentinel set takes to form.
const formTimeout = 30 * time.Second

// Cluster is a Redis Cluster of real redis-server processes: masters holding the 16384 slots
// in equal ranges, each with its replicas.
type Cluster struct {
	Masters  []*Server
	Replicas []*Server // Replicas[i] replicates Masters[i / replicas-per-master]
}

// StartCluster starts masters × (1 + replicasEach) cluster nodes on free loopback ports
// (each with its port + 10000 free for the cluster bus), joins them and returns once every
// node reports cluster_state:ok and every replica is in sync. The caller must Close it.
func StartCluster(masters, replicasEach int) (*Cluster, error) {
	if masters < 1 {
		return nil, errors.New("redistest: a cluster needs a master")
	}
	c := &Cluster{}
	r := role{clusterBus: true, args: []string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", "1000",
		"--cluster-replica-validity-factor", "0", // a replica may always take over (tests kill masters)
	}}
	for i := range masters * (1 + replicasEach) {
		s, err := start(nil, r)
		if err != nil {
			c.Close()
			return nil, err
		}
		if i < masters {
			c.Masters = append(c.Masters, s)
		} else {
			c.Replicas = append(c.Replicas, s)
		}
	}
	if err := c.form(replicasEach); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// StartClusterT is StartCluster for one test, closed at its cleanup.
func StartClusterT(t testing.TB, masters, replicasEach int) *Cluster {
	t.Helper()
	return startT(t, func() (*Cluster, error) { return StartCluster(masters, replicasEach) })
}

// startT runs start for one test, failing it on error, and closes what started at cleanup.
func startT[T interface{ Close() error }](t testing.TB, start func() (T, error)) T {
	t.Helper()
	v, err := start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = v.Close() })
	return v
}

func (c *Cluster) form(replicasEach int) error {
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	all := c.Nodes()
	clients := make([]*goredis.Client, len(all))
	for i, s := range all {
		clients[i] = goredis.NewClient(&goredis.Options{Addr: s.Addr()})
		defer clients[i].Close()
	}
	per := 16384 / len(c.Masters)
	for i := range c.Masters {
		lo, hi := i*per, (i+1)*per-1
		if i == len(c.Masters)-1 {
			hi = 16383
		}
		if err := clients[i].Do(ctx, "cluster", "addslotsrange", lo, hi).Err(); err != nil {
			return fmt.Errorf("redistest: cluster addslotsrange on %s: %w", all[i].Addr(), err)
		}
	}
	for _, s := range all[1:] {
		if err := clients[0].ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(s.Port())).Err(); err != nil {
			return fmt.Errorf("redistest: cluster meet %s: %w", s.Addr(), err)
		}
	}
	if err := until(ctx, "every node knows every other", func() bool {
		for _, cl := range clients {
			nodes, err := cl.ClusterNodes(ctx).Result()
			if err != nil || strings.Count(nodes, "\n") < len(all) || strings.Contains(nodes, "handshake") {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	for i := range c.Replicas {
		master := clients[i/replicasEach]
		id, err := master.Do(ctx, "cluster", "myid").Text()
		if err != nil {
			return fmt.Errorf("redistest: cluster myid: %w", err)
		}
		replica := clients[len(c.Masters)+i]
		if err := until(ctx, "replicas attached", func() bool {
			return replica.ClusterReplicate(ctx, id).Err() == nil
		}); err != nil {
			return err
		}
	}
	return c.WaitHealthy(ctx)
}

// WaitHealthy returns once every running node reports cluster_state:ok and every running
// replica's link to its master is up (after a failover or a restart, say).
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	return until(ctx, "cluster_state:ok on every node, replicas in sync", func() bool {
		for _, s := range c.Nodes() {
			if !s.Running() {
				continue
			}
			cl := goredis.NewClient(&goredis.Options{Addr: s.Addr()})
			info, err := cl.ClusterInfo(ctx).Result()
			repl, rerr := cl.Info(ctx, "replication").Result()
			cl.Close()
			if err != nil || rerr != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
			if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				return false
			}
		}
		return true
	})
}

// MasterOf returns the running master that owns key's slot now.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	for _, s := range c.Masters {
		if !s.Running() {
			continue
		}
		cl := goredis.NewClient(&goredis.Options{Addr: s.Addr()})
		defer cl.Close()
		slot, err := cl.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			return nil, err
		}
		shards, err := cl.ClusterShards(ctx).Result()
		if err != nil {
			return nil, err
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if slot < r.Start || slot > r.End {
					continue
				}
				for _, n := range sh.Nodes {
					for _, x := range c.Nodes() {
						if n.Role == "master" && x.Port() == int(n.Port) {
							return x, nil
						}
					}
				}
			}
		}
		return nil, fmt.Errorf("redistest: no node owns slot %d of %q", slot, key)
	}
	return nil, errors.New("redistest: no master running")
}

// Nodes returns the masters and then the replicas.
func (c *Cluster) Nodes() []*Server {
	return append(append([]*Server(nil), c.Masters...), c.Replicas...)
}

// URL is a REDIS_URL for PULSE_REDIS_MODE=cluster: the first master, the others as addr=.
func (c *Cluster) URL() string {
	u := "redis://" + c.Masters[0].Addr()
	for i, s := range c.Nodes()[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + s.Addr()
	}
	return u
}

// Close stops every node and removes their directories.
func (c *Cluster) Close() error {
	var errs []error
	for _, s := range c.Nodes() {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// Sentinel is a primary, its replica and three sentinels monitoring it as MasterName, with a
// quorum of two and a primary considered down after one second.
type Sentinel struct {
	Primary, Replica *Server
	Sentinels        []*Server
}

// MasterName is the name the sentinels know the primary by.
const MasterName = "pulse"

// StartReplica starts a replica of primary and returns once it is in sync. The caller must
// Close it.
func StartReplica(primary *Server) (*Server, error) {
	s, err := start(nil, role{args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(primary.Port())}})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	cl := goredis.NewClient(&goredis.Options{Addr: s.Addr()})
	defer cl.Close()
	if err := until(ctx, "the replica in sync", func() bool {
		info, err := cl.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	}); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// StartSentinel starts the set and returns once every sentinel sees the primary, its replica
// and the other sentinels. The caller must Close it.
func StartSentinel() (*Sentinel, error) {
	primary, err := start(nil, role{})
	if err != nil {
		return nil, err
	}
	set := &Sentinel{Primary: primary}
	if set.Replica, err = StartReplica(primary); err != nil {
		set.Close()
		return nil, err
	}
	conf := func(s *Server) (string, error) {
		path := filepath.Join(s.dir, "sentinel.conf")
		if _, err := os.Stat(path); err == nil {
			return path, nil // a restart keeps what the sentinel learnt
		}
		text := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 5000\n"+
			"sentinel parallel-syncs %[1]s 1\n", MasterName, primary.Port())
		return path, os.WriteFile(path, []byte(text), 0o600)
	}
	for range 3 {
		s, err := start(nil, role{sentinel: conf})
		if err != nil {
			set.Close()
			return nil, err
		}
		set.Sentinels = append(set.Sentinels, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	if err := until(ctx, "every sentinel sees the replica and the other sentinels", func() bool {
		for _, s := range set.Sentinels {
			sc := goredis.NewSentinelClient(&goredis.Options{Addr: s.Addr()})
			m, err := sc.Master(ctx, MasterName).Result()
			sc.Close()
			if err != nil || m["num-slaves"] != "1" || m["num-other-sentinels"] != "2" {
				return false
			}
		}
		return true
	}); err != nil {
		set.Close()
		return nil, err
	}
	return set, nil
}

// StartSentinelT is StartSentinel for one test, closed at its cleanup.
func StartSentinelT(t testing.TB) *Sentinel {
	t.Helper()
	return startT(t, StartSentinel)
}

// URL is a REDIS_URL for PULSE_REDIS_MODE=sentinel: the sentinels, and the master's name.
func (s *Sentinel) URL() string {
	u := "redis://" + s.Sentinels[0].Addr() + "/0?master_name=" + MasterName
	for _, x := range s.Sentinels[1:] {
		u += "&addr=" + x.Addr()
	}
	return u
}

// CurrentPrimary is the address the sentinels give for the primary now.
func (s *Sentinel) CurrentPrimary(ctx context.Context) (string, error) {
	sc := goredis.NewSentinelClient(&goredis.Options{Addr: s.Sentinels[0].Addr()})
	defer sc.Close()
	addr, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(addr[0], addr[1]), nil
}

// Close stops every process of the set and removes their directories.
func (s *Sentinel) Close() error {
	var errs []error
	for _, x := range append([]*Server{s.Primary, s.Replica}, s.Sentinels...) {
		if x != nil {
			errs = append(errs, x.Close())
		}
	}
	return errors.Join(errs...)
}

// until polls cond every 50 ms until it holds or ctx ends (then the error names what).
func until(ctx context.Context, what string, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("redistest: %s: not within %s", what, formTimeout)
		case <-time.After(50 * time.Millisecond): // polling servers that form on their own
		}
	}
	return nil
}

// freeClusterPort returns a free loopback port whose cluster bus port (+10000) is free too,
// both below the kernel's ephemeral range: a node killed and restarted must find its port
// again, which an outgoing connection could otherwise have been given meanwhile.
func freeClusterPort() (int, error) { return portBelowEphemeral(10000) }

// portBelowEphemeral returns a free loopback port p below the ephemeral range, with p+bus
// free too when bus > 0.
func portBelowEphemeral(bus int) (int, error) {
	lo := 32768 // Linux's default start of ip_local_port_range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				lo = n
			}
		}
	}
	if lo < bus+2048 {
		return 0, fmt.Errorf("redistest: the ephemeral ports start at %d, too low for cluster port pairs", lo)
	}
	for range 100 {
		p := 1024 + rand.IntN(lo-bus-1024)
		if free(p) && (bus == 0 || free(p+bus)) {
			return p, nil
		}
	}
	return 0, errors.New("redistest: no free port pair (p, p+10000) found")
}

func free(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}
