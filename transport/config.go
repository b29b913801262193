package transport

import (
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/envelope"
)

// Defaults, defined once. A zero field in Config means its default.
const (
	DefaultBackend         = "jetstream"
	DefaultNamespace       = "mdp"
	DefaultGroup           = "pipeline"
	DefaultConsumer        = "pipeline_w1"
	DefaultMaxDeliveries   = 5
	DefaultAckWait         = 30 * time.Second
	DefaultRetryBackoffMin = 500 * time.Millisecond
	DefaultRetryBackoffMax = 30 * time.Second
	DefaultDrainTimeout    = 10 * time.Second
	DefaultBatchSize       = 256
	DefaultIdempotencySize = 100_000
	DefaultIdempotencyTTL  = 15 * time.Minute
	DefaultRedisURL        = "redis://localhost:6379/0"
	DefaultStreamMaxAge    = 7 * 24 * time.Hour
	DefaultStreamReplicas  = 1
)

// DLQSuffix is appended to a logical stream name to name its dead-letter stream.
const DLQSuffix = ".dlq"

// Dead-letter metadata keys (Redis entry fields; JetStream headers).
const (
	DLQOriginalID = "original_id"
	DLQReason     = "reason"
	DLQError      = "error"
	DLQAttempts   = "attempts"
	DLQFailedAt   = "failed_at"
	DLQStream     = "stream"
	// DLQReplayOf marks a message re-published from a dead-letter stream (`pulse dlq
	// replay`): its value is the dead letter's original_id. It travels beside the body (a
	// Redis entry field, a JetStream header), never in it; a delivery carrying it has
	// Delivery.Replayed set.
	DLQReplayOf = "replay_of"
	// DLQKeptIn marks a dead letter that holds no copy of the original, because the copy
	// would not fit the broker (transport.ErrTooLarge): its value is the source stream,
	// where the original stays at original_id (acked, retained like any other message), and
	// its body is a small JSON record of the original's size and SHA-256 (DeadLetterPointer).
	DLQKeptIn = "kept_in"
)

// DeadLetterPointer is the body of a dead letter marked DLQKeptIn.
type DeadLetterPointer struct {
	// KeptIn and OriginalID say where the original is: its source stream and transport id.
	KeptIn     string `json:"kept_in"`
	OriginalID string `json:"original_id"`
	// Size and SHA256 (hex) identify the original's bytes.
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

var namespaceRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// Config configures a Bus and its driver. The zero value means every default; FromEnv reads
// it from the environment of docs/contract.md §5.
type Config struct {
	Backend   string         // EVENT_BUS_BACKEND
	Namespace string         // MD_NAMESPACE
	Track     envelope.Track // SCHEMA_TRACK: what Publish writes
	// PublisherToken (PUBLISHER_TOKEN) signs what is published and is required of what is
	// consumed; "" or "unset" turns authentication off.
	PublisherToken string
	Group          string        // PULSE_GROUP
	Consumer       string        // PULSE_CONSUMER_NAME
	MaxDeliveries  int           // PULSE_MAX_DELIVERIES
	AckWait        time.Duration // PULSE_ACK_WAIT

	// RetryBackoffMin and RetryBackoffMax (PULSE_RETRY_BACKOFF_MIN/_MAX) bound the delay
	// before a failed message is tried again: Min × 2^(attempt-1), capped at Max.
	RetryBackoffMin time.Duration
	RetryBackoffMax time.Duration
	// DrainTimeout bounds how long closing a subscription waits for in-flight handlers.
	DrainTimeout time.Duration
	// BatchSize is the most deliveries fetched at once.
	BatchSize int
	// IdempotencySize and IdempotencyTTL bound the in-process record of handled ids.
	IdempotencySize int
	IdempotencyTTL  time.Duration
	// SharedIdempotency keeps the record in the broker (when the driver can) so that replicas
	// and restarts share it.
	SharedIdempotency bool

	// Backend settings.
	RedisURL string // REDIS_URL
	// RedisMode (PULSE_REDIS_MODE) is how REDIS_URL is read: "single" (the default), "cluster"
	// (Redis Cluster: the URL's host and its addr= parameters are seed nodes) or "sentinel"
	// (the URL's host and addr= parameters are sentinels; master_name= names the primary).
	RedisMode string
	// RedisMinReplicas (PULSE_REDIS_MIN_REPLICAS, default 0): when > 0 a publish, a dead
	// letter and a key-value write return only once that many replicas have them (WAIT).
	RedisMinReplicas int
	// RedisWaitTimeout (PULSE_REDIS_WAIT_TIMEOUT, default 2s) bounds that wait; fewer
	// replicas by then is an error wrapping ErrUnavailable (the primary has the write).
	RedisWaitTimeout time.Duration
	NATSURL          string // NATS_URL; "" = the embedded server
	NATSCredsFile    string // PULSE_NATS_CREDS: a JWT + nkey seed credentials file
	// NATSToken (PULSE_NATS_TOKEN, a secret) is the token the embedded server requires of
	// every client and that clients present to the NATS server (unless NATS_URL carries
	// credentials of its own).
	NATSToken string
	// NATSNKeyFile (PULSE_NATS_NKEY) is a file holding an nkey seed (SU…) to sign in with.
	NATSNKeyFile string
	// NATSTLSCA (PULSE_NATS_TLS_CA) is a PEM file of the CAs that sign the server's
	// certificate; NATSTLSCert and NATSTLSKey (PULSE_NATS_TLS_CERT, PULSE_NATS_TLS_KEY) are
	// the client's certificate and key, for servers that verify clients (mutual TLS).
	NATSTLSCA      string
	NATSTLSCert    string
	NATSTLSKey     string
	StreamMaxAge   time.Duration // PULSE_STREAM_MAX_AGE
	StreamMaxBytes int64         // PULSE_STREAM_MAX_BYTES (0 = unlimited)
	StreamMaxLen   int64         // PULSE_STREAM_MAX_LEN (0 = unlimited)
	Replicas       int           // PULSE_STREAM_REPLICAS

	// Schemas validates payloads (nil accepts every schema_id).
	Schemas *envelope.Schemas
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Observer receives metrics events; nil drops them.
	Observer Observer
	// Idempotency overrides the record of handled ids (tests, custom stores).
	Idempotency IdempotencyStore
	// TracerProvider makes the Bus's spans (publish, process, settle; docs/design.md
	// "Tracing"); nil means the global one (otel.GetTracerProvider, looked up at each
	// span), a no-op unless the program sets one. While it is a no-op the Bus starts no
	// span and allocates nothing for tracing; it still passes on the trace context a
	// message or the caller's context carries. A delivery whose trace context is not
	// sampled (the producer's sampler said no) gets no spans either, as a parent-based
	// sampler (the SDK's default) would decide: only a sampler that records children of
	// unsampled parents would see a difference.
	TracerProvider trace.TracerProvider
	// Propagator writes the trace context into what is published and reads it from what is
	// delivered; nil means W3C Trace Context and Baggage (traceparent, tracestate, baggage:
	// the wire format of docs/contract.md §2), whatever the global propagator is. Pass
	// otel.GetTextMapPropagator() to follow the program's.
	Propagator propagation.TextMapPropagator
}

// WithDefaults returns c with every zero field replaced by its default (a nil Logger and
// Observer become no-ops): the effective configuration, e.g. for printing.
func (c Config) WithDefaults() Config { return c.withDefaults() }

func (c Config) withDefaults() Config {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&c.Backend, DefaultBackend)
	def(&c.Namespace, DefaultNamespace)
	def((*string)(&c.Track), string(envelope.DefaultTrack))
	def(&c.Group, DefaultGroup)
	def(&c.Consumer, DefaultConsumer)
	def(&c.RedisURL, DefaultRedisURL)
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defInt(&c.MaxDeliveries, DefaultMaxDeliveries)
	defInt(&c.BatchSize, DefaultBatchSize)
	defInt(&c.IdempotencySize, DefaultIdempotencySize)
	defInt(&c.Replicas, DefaultStreamReplicas)
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defDur(&c.AckWait, DefaultAckWait)
	defDur(&c.RetryBackoffMin, DefaultRetryBackoffMin)
	defDur(&c.RetryBackoffMax, DefaultRetryBackoffMax)
	defDur(&c.DrainTimeout, DefaultDrainTimeout)
	defDur(&c.IdempotencyTTL, DefaultIdempotencyTTL)
	defDur(&c.StreamMaxAge, DefaultStreamMaxAge)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return c
}

// Validate checks the configuration: the portable settings, then the settings of
// c.Backend with the check its driver registered (see Register); errors are *envconf.Error.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case !namespaceRE.MatchString(c.Namespace):
		return &envconf.Error{Var: "MD_NAMESPACE", Value: c.Namespace, Accepted: "lower-case letters, digits, '_' and '-' ([a-z0-9_-]+)"}
	case c.Track != envelope.TrackV1 && c.Track != envelope.TrackV2:
		return &envconf.Error{Var: "SCHEMA_TRACK", Value: string(c.Track), Accepted: "v1, v2"}
	case c.MaxDeliveries < 1:
		return &envconf.Error{Var: "PULSE_MAX_DELIVERIES", Value: strconv.Itoa(c.MaxDeliveries), Accepted: "an integer ≥ 1"}
	case c.AckWait < 0:
		return &envconf.Error{Var: "PULSE_ACK_WAIT", Value: c.AckWait.String(), Accepted: "a positive duration such as 30s"}
	case !validName(c.Group):
		return &envconf.Error{Var: "PULSE_GROUP", Value: c.Group, Accepted: "letters, digits, '_' and '-'"}
	case !validName(c.Consumer):
		return &envconf.Error{Var: "PULSE_CONSUMER_NAME", Value: c.Consumer, Accepted: "letters, digits, '_' and '-'"}
	case c.RetryBackoffMin < 0 || c.RetryBackoffMax < c.RetryBackoffMin:
		return &envconf.Error{Var: "PULSE_RETRY_BACKOFF_MAX", Value: c.RetryBackoffMax.String(), Accepted: fmt.Sprintf("a duration ≥ PULSE_RETRY_BACKOFF_MIN (%s)", c.RetryBackoffMin)}
	case c.BatchSize < 1:
		return &envconf.Error{Var: "PULSE_BATCH_SIZE", Value: strconv.Itoa(c.BatchSize), Accepted: "an integer ≥ 1"}
	case c.Replicas < 1 || c.Replicas > 5:
		return &envconf.Error{Var: "PULSE_STREAM_REPLICAS", Value: strconv.Itoa(c.Replicas), Accepted: "1 to 5"}
	case c.StreamMaxBytes < 0:
		return &envconf.Error{Var: "PULSE_STREAM_MAX_BYTES", Value: strconv.FormatInt(c.StreamMaxBytes, 10), Accepted: "0 (unlimited) or a positive number of bytes"}
	case c.StreamMaxLen < 0:
		return &envconf.Error{Var: "PULSE_STREAM_MAX_LEN", Value: strconv.FormatInt(c.StreamMaxLen, 10), Accepted: "0 (unlimited) or a positive number of messages"}
	}
	return checkBackend(c)
}

// validName accepts names that are safe as Redis group names, JetStream durable names and
// NATS subject tokens.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// ValidStreamName reports whether s can be a logical stream name: dot-separated tokens of
// letters, digits, '_' and '-'.
func ValidStreamName(s string) bool {
	if s == "" {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if !validName(tok) {
			return false
		}
	}
	return true
}

// FromEnv reads the bus settings of docs/contract.md §5 through lookup (os.LookupEnv in
// production). Unset variables keep their defaults. The first invalid value is returned as a
// *envconf.Error.
func FromEnv(lookup func(string) (string, bool)) (Config, error) {
	var c Config
	p := envconf.Reader{Lookup: lookup}
	p.String("EVENT_BUS_BACKEND", &c.Backend)
	p.String("MD_NAMESPACE", &c.Namespace)
	p.String("SCHEMA_TRACK", (*string)(&c.Track))
	p.String("PUBLISHER_TOKEN", &c.PublisherToken)
	p.String("PULSE_GROUP", &c.Group)
	p.String("PULSE_CONSUMER_NAME", &c.Consumer)
	p.PositiveInt("PULSE_MAX_DELIVERIES", &c.MaxDeliveries)
	p.Duration("PULSE_ACK_WAIT", &c.AckWait)
	p.Duration("PULSE_DRAIN_TIMEOUT", &c.DrainTimeout)
	p.Duration("PULSE_RETRY_BACKOFF_MIN", &c.RetryBackoffMin)
	p.Duration("PULSE_RETRY_BACKOFF_MAX", &c.RetryBackoffMax)
	p.PositiveInt("PULSE_BATCH_SIZE", &c.BatchSize)
	p.String("REDIS_URL", &c.RedisURL)
	p.OneOf("PULSE_REDIS_MODE", &c.RedisMode, "single", "cluster", "sentinel")
	p.NonNegativeInt("PULSE_REDIS_MIN_REPLICAS", &c.RedisMinReplicas)
	p.Duration("PULSE_REDIS_WAIT_TIMEOUT", &c.RedisWaitTimeout)
	p.String("NATS_URL", &c.NATSURL)
	p.String("PULSE_NATS_CREDS", &c.NATSCredsFile)
	p.String("PULSE_NATS_TOKEN", &c.NATSToken)
	p.String("PULSE_NATS_NKEY", &c.NATSNKeyFile)
	p.String("PULSE_NATS_TLS_CA", &c.NATSTLSCA)
	p.String("PULSE_NATS_TLS_CERT", &c.NATSTLSCert)
	p.String("PULSE_NATS_TLS_KEY", &c.NATSTLSKey)
	p.Duration("PULSE_STREAM_MAX_AGE", &c.StreamMaxAge)
	p.Int64("PULSE_STREAM_MAX_BYTES", &c.StreamMaxBytes)
	p.Int64("PULSE_STREAM_MAX_LEN", &c.StreamMaxLen)
	p.PositiveInt("PULSE_STREAM_REPLICAS", &c.Replicas)
	p.Bool("PULSE_SHARED_IDEMPOTENCY", &c.SharedIdempotency)
	if p.Err != nil {
		return Config{}, p.Err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
