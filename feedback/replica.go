package feedback

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pulse-bus/pulse/transport"
)

// ReplicaBucket is the KeyValue bucket (transport.Bus.KeyValue) where running consumers
// register, so that two processes reading as the same member of the same group — which
// split the events between them — find out.
const ReplicaBucket = "replicas"

// DefaultPresenceInterval is how often a running consumer renews its registration (see
// ConsumerConfig.PresenceInterval); a collision is noticed within about two of them.
const DefaultPresenceInterval = 2 * time.Second

// ReplicaName returns a consumer name that is stable across restarts of one replica and
// unique between replicas: "pulse-<host>-<hash>", the host name cut to letters, digits, '_'
// and '-', and the first 8 hex digits of a SHA-256 of the host name and place (what tells
// two replicas on one host apart, such as their data directory and HTTP address).
func ReplicaName(host string, place ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(append([]string{host}, place...), "\x00")))
	clean := strings.Map(func(r rune) rune {
		if r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '-'
	}, host)
	if len(clean) > 40 {
		clean = clean[:40]
	}
	if clean == "" {
		clean = "host"
	}
	return "pulse-" + clean + "-" + hex.EncodeToString(sum[:4])
}

// presenceRecord is a running consumer's registration.
type presenceRecord struct {
	Instance string    `json:"instance"` // random, one per Consumer
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Started  time.Time `json:"started"`
	Beat     time.Time `json:"beat"`
}

func (r presenceRecord) String() string {
	return fmt.Sprintf("instance %s on host %s (pid %d, started %s)", r.Instance, r.Host, r.PID, r.Started.UTC().Format(time.RFC3339))
}

// ErrReplicaCollision is wrapped by Consumer.Collision while another live process reads as
// the same member of the same group.
var ErrReplicaCollision = errors.New("feedback: another process reads as this replica")

// presence keeps a consumer's registration under key in kv, renewing it every beat with
// compare-and-set: a write by anyone else in between is another live process using the
// same key. The consumer's run loop calls beat; Close calls leave.
type presence struct {
	kv       transport.KeyValue
	key      string
	interval time.Duration
	log      *slog.Logger
	me       presenceRecord

	mu        sync.Mutex
	rev       uint64
	other     *presenceRecord // the colliding process, while there is one
	otherSeen time.Time
}

func newPresence(kv transport.KeyValue, key string, interval time.Duration, log *slog.Logger) *presence {
	var id [8]byte
	_, _ = rand.Read(id[:])
	host, _ := os.Hostname()
	now := time.Now()
	return &presence{kv: kv, key: key, interval: interval, log: log,
		me: presenceRecord{Instance: hex.EncodeToString(id[:]), Host: host, PID: os.Getpid(), Started: now, Beat: now}}
}

// join registers, over whatever record a previous process left (a restart of this replica
// overwrites its own leftovers; a live twin finds out at its next beat).
func (p *presence) join(ctx context.Context) error {
	body, _ := json.Marshal(p.me)
	rev, err := p.kv.Put(ctx, p.key, body)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.rev = rev
	p.mu.Unlock()
	return nil
}

// beat renews the registration, and notices (and reports) another process writing it.
func (p *presence) beat(ctx context.Context, now time.Time) {
	p.mu.Lock()
	rev := p.rev
	p.me.Beat = now
	body, _ := json.Marshal(p.me)
	p.mu.Unlock()
	n, err := p.kv.Update(ctx, p.key, body, rev)
	if err == nil {
		p.mu.Lock()
		p.rev = n
		if p.other != nil && now.Sub(p.otherSeen) > 3*p.interval {
			p.log.Info("replica collision over: the other process stopped writing", "key", p.key, "other", p.other.String())
			p.other = nil
		}
		p.mu.Unlock()
		return
	}
	if !errors.Is(err, transport.ErrConflict) {
		p.log.Debug("renewing the replica registration failed; retrying", "key", p.key, "err", err)
		return
	}
	cur, err := p.kv.Get(ctx, p.key)
	switch {
	case errors.Is(err, transport.ErrKeyNotFound):
		err = p.join(ctx)
	case err == nil:
		var other presenceRecord
		if json.Unmarshal(cur.Value, &other) == nil && other.Instance != p.me.Instance {
			p.mu.Lock()
			first := p.other == nil
			p.other, p.otherSeen = &other, now
			p.mu.Unlock()
			if first {
				p.log.Warn("another live process reads as this replica: the two split the feedback events between them; give each replica its own PULSE_CONSUMER_NAME",
					"key", p.key, "me", p.me.String(), "other", other.String())
			}
		}
		err = p.join(ctx)
	}
	if err != nil {
		p.log.Debug("renewing the replica registration failed; retrying", "key", p.key, "err", err)
	}
}

// collision is nil, or why this replica shares its identity with another live process.
func (p *presence) collision() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.other == nil {
		return nil
	}
	return fmt.Errorf("%w: %s is also used by %s, last seen %s; each gets only some of the events",
		ErrReplicaCollision, p.key, p.other.String(), p.otherSeen.UTC().Format(time.RFC3339))
}

// leave removes the registration if it is still this process's.
func (p *presence) leave(ctx context.Context) {
	p.mu.Lock()
	rev := p.rev
	p.mu.Unlock()
	if err := p.kv.Delete(ctx, p.key, rev); err != nil && !errors.Is(err, transport.ErrConflict) {
		p.log.Debug("removing the replica registration failed", "key", p.key, "err", err)
	}
}
