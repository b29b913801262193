package app

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/feedback"
	"github.com/pulse-bus/pulse/telemetry"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/jetstream/embedded"
)

// Defaults of the settings that belong to the service rather than to the bus or the feedback
// policy (those are transport's and feedback's constants).
const (
	DefaultHTTPAddr        = "127.0.0.1:9464"
	DefaultFeedbackStream  = "telemetry.feedback"
	DefaultRateStream      = "telemetry.rate_adjustment"
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "text"
	DefaultShutdownTimeout = 20 * time.Second
)

// Config is the effective configuration of the service: the environment of docs/contract.md §5,
// overridden by flags of the same meaning. Load builds it; its zero value is not usable.
type Config struct {
	// Bus is the transport configuration (EVENT_BUS_BACKEND, NATS_URL, REDIS_URL, ...).
	Bus transport.Config
	// Embedded is the embedded JetStream server's address and store (PULSE_NATS_LISTEN,
	// PULSE_DATA_DIR); its token is Bus.NATSToken.
	Embedded embedded.Options
	// Policy is the feedback policy (MDP_FB_*), defaults filled in.
	Policy feedback.Policy
	// Enabled turns the feedback consumer on (PULSE_ENABLED).
	Enabled bool
	// HTTPAddr is where /metrics, /healthz, /readyz and /state are served (PULSE_HTTP_ADDR).
	HTTPAddr string
	// FeedbackStream is the logical stream the consumer reads (PULSE_FEEDBACK_STREAM).
	FeedbackStream string
	// SharedGroup makes replicas share one group, splitting feedback between them, instead
	// of a group per replica (PULSE_FEEDBACK_SHARED_GROUP; see feedback.ReplicaGroup).
	SharedGroup bool
	// LogLevel and LogFormat configure the slog handler (PULSE_LOG_LEVEL, PULSE_LOG_FORMAT).
	LogLevel  slog.Level
	LogFormat string
	// ShutdownTimeout bounds the whole teardown after SIGINT/SIGTERM
	// (PULSE_SHUTDOWN_TIMEOUT).
	ShutdownTimeout time.Duration
	// Tracing is span export (the standard OTEL_* variables; off unless an OTLP endpoint is
	// set).
	Tracing telemetry.TracingConfig

	// sources records, per variable, where a non-default value came from ("env" or "flag").
	sources map[string]string
}

// EmbeddedNATS reports whether the configuration asks for the embedded JetStream server:
// the jetstream backend with no NATS_URL.
func (c *Config) EmbeddedNATS() bool {
	return c.Bus.Backend == "jetstream" && c.Bus.NATSURL == ""
}

// setting is one configuration variable: its environment name, the flag of the same meaning
// ("" for environment-only settings, such as secrets, which do not belong on a command line
// that every user of the machine can read), and how to show its effective value.
type setting struct {
	env    string
	flag   string
	usage  string
	isBool bool
	show   func(c *Config) string
}

// settings lists every variable Load reads, in the order `pulse config` prints them.
var settings = []setting{
	{env: "PULSE_ENABLED", flag: "enabled", isBool: true, usage: "run the feedback consumer", show: func(c *Config) string { return strconv.FormatBool(c.Enabled) }},
	{env: "EVENT_BUS_BACKEND", flag: "backend", usage: "bus backend: inmem, redis or jetstream", show: func(c *Config) string { return c.Bus.Backend }},
	{env: "NATS_URL", flag: "nats-url", usage: "NATS server URL(s), comma-separated; unset: the embedded server", show: func(c *Config) string { return transport.RedactURLs(c.Bus.NATSURL) }},
	{env: "PULSE_NATS_LISTEN", flag: "nats-listen", usage: "embedded JetStream server address (host:port)", show: func(c *Config) string { return c.Embedded.Listen }},
	{env: "PULSE_NATS_TOKEN", usage: "", show: func(c *Config) string { return maskToken(c.Bus.NATSToken) }},
	{env: "PULSE_NATS_CREDS", flag: "nats-creds", usage: "NATS credentials file (user JWT and nkey seed)", show: func(c *Config) string { return c.Bus.NATSCredsFile }},
	{env: "PULSE_NATS_NKEY", flag: "nats-nkey", usage: "file holding a NATS user nkey seed", show: func(c *Config) string { return c.Bus.NATSNKeyFile }},
	{env: "PULSE_NATS_TLS_CA", flag: "nats-tls-ca", usage: "PEM file of the CAs that sign the NATS server's certificate", show: func(c *Config) string { return c.Bus.NATSTLSCA }},
	{env: "PULSE_NATS_TLS_CERT", flag: "nats-tls-cert", usage: "PEM client certificate for NATS servers that verify clients", show: func(c *Config) string { return c.Bus.NATSTLSCert }},
	{env: "PULSE_NATS_TLS_KEY", flag: "nats-tls-key", usage: "PEM key of PULSE_NATS_TLS_CERT", show: func(c *Config) string { return c.Bus.NATSTLSKey }},
	{env: "PULSE_DATA_DIR", flag: "data-dir", usage: "embedded JetStream server's store directory", show: func(c *Config) string { return c.Embedded.DataDir }},
	{env: "REDIS_URL", flag: "redis-url", usage: "redis:// or rediss:// URL", show: func(c *Config) string { return transport.RedactURLs(c.Bus.RedisURL) }},
	{env: "PULSE_REDIS_MODE", flag: "redis-mode", usage: "how REDIS_URL is read: single, cluster or sentinel", show: func(c *Config) string { return cmp.Or(c.Bus.RedisMode, "single") }},
	{env: "PULSE_REDIS_MIN_REPLICAS", usage: "replicas that must have a write before it returns (WAIT); 0: none", show: func(c *Config) string { return strconv.Itoa(c.Bus.RedisMinReplicas) }},
	{env: "PULSE_REDIS_WAIT_TIMEOUT", usage: "how long a write waits for PULSE_REDIS_MIN_REPLICAS", show: func(c *Config) string { return c.Bus.RedisWaitTimeout.String() }},
	{env: "MD_NAMESPACE", flag: "namespace", usage: "bus namespace ([a-z0-9_-]+)", show: func(c *Config) string { return c.Bus.Namespace }},
	{env: "SCHEMA_TRACK", flag: "track", usage: "schema track producers write: v1 or v2", show: func(c *Config) string { return string(c.Bus.Track) }},
	{env: "PUBLISHER_TOKEN", usage: "", show: func(c *Config) string { return maskToken(c.Bus.PublisherToken) }},
	{env: "PULSE_GROUP", flag: "group", usage: "consumer group", show: func(c *Config) string { return c.Bus.Group }},
	{env: "PULSE_CONSUMER_NAME", flag: "consumer", usage: "this replica's name (default: derived from the host name, PULSE_DATA_DIR and PULSE_HTTP_ADDR)", show: func(c *Config) string { return c.Bus.Consumer }},
	{env: "PULSE_FEEDBACK_STREAM", flag: "feedback-stream", usage: "logical stream of feedback events", show: func(c *Config) string { return c.FeedbackStream }},
	{env: feedback.EnvSharedGroup, flag: "shared-group", isBool: true, usage: "replicas share PULSE_GROUP (each event reaches one replica) instead of a group each", show: func(c *Config) string { return strconv.FormatBool(c.SharedGroup) }},
	{env: "PULSE_MAX_DELIVERIES", flag: "max-deliveries", usage: "attempts before dead-lettering", show: func(c *Config) string { return strconv.Itoa(c.Bus.MaxDeliveries) }},
	{env: "PULSE_ACK_WAIT", flag: "ack-wait", usage: "unacked messages are redelivered after this", show: func(c *Config) string { return c.Bus.AckWait.String() }},
	{env: "PULSE_DRAIN_TIMEOUT", flag: "drain-timeout", usage: "how long in-flight work may take to finish at shutdown", show: func(c *Config) string { return c.Bus.DrainTimeout.String() }},
	{env: "PULSE_RETRY_BACKOFF_MIN", flag: "retry-backoff-min", usage: "delay before the first retry of a failed message (doubles per attempt)", show: func(c *Config) string { return c.Bus.RetryBackoffMin.String() }},
	{env: "PULSE_RETRY_BACKOFF_MAX", flag: "retry-backoff-max", usage: "longest delay between retries", show: func(c *Config) string { return c.Bus.RetryBackoffMax.String() }},
	{env: "PULSE_BATCH_SIZE", flag: "batch-size", usage: "most deliveries fetched at once", show: func(c *Config) string { return strconv.Itoa(c.Bus.BatchSize) }},
	{env: "PULSE_STREAM_MAX_AGE", flag: "stream-max-age", usage: "retention: oldest message kept", show: func(c *Config) string { return c.Bus.StreamMaxAge.String() }},
	{env: "PULSE_STREAM_MAX_BYTES", flag: "stream-max-bytes", usage: "retention: bytes per stream (0 = unlimited)", show: func(c *Config) string { return strconv.FormatInt(c.Bus.StreamMaxBytes, 10) }},
	{env: "PULSE_STREAM_MAX_LEN", flag: "stream-max-len", usage: "retention: messages per stream (0 = unlimited)", show: func(c *Config) string { return strconv.FormatInt(c.Bus.StreamMaxLen, 10) }},
	{env: "PULSE_STREAM_REPLICAS", flag: "stream-replicas", usage: "JetStream stream replicas (1 to 5)", show: func(c *Config) string { return strconv.Itoa(c.Bus.Replicas) }},
	{env: "PULSE_SHARED_IDEMPOTENCY", flag: "shared-idempotency", isBool: true, usage: "keep the handled-ids record in the broker", show: func(c *Config) string { return strconv.FormatBool(c.Bus.SharedIdempotency) }},
	{env: feedback.EnvProvider, flag: "provider", usage: "provider whose rate feedback scales", show: func(c *Config) string { return c.Policy.Provider }},
	{env: feedback.EnvBaseRate, flag: "base-rate", usage: "provider's base rate, messages per second", show: func(c *Config) string { return fmtFloat(c.Policy.BaseRate) }},
	{env: feedback.EnvMinRate, flag: "min-rate", usage: "floor under a throttled rate, messages per second", show: func(c *Config) string { return fmtFloat(c.Policy.MinRate) }},
	{env: feedback.EnvBurst, flag: "burst", usage: "provider's token bucket depth", show: func(c *Config) string { return strconv.Itoa(c.Policy.Burst) }},
	{env: feedback.EnvCoordinatorTTL, flag: "coordinator-ttl", usage: "a Store coordinator silent for longer than this stops counting toward the minimum (0 = never)", show: func(c *Config) string { return c.Policy.CoordinatorTTL.String() }},
	{env: feedback.EnvMaxClockSkew, flag: "max-clock-skew", usage: "an event stamped further ahead of this clock is dead-lettered (clock_skew)", show: func(c *Config) string { return c.Policy.MaxClockSkew.String() }},
	{env: feedback.EnvMaxCoordinators, flag: "max-coordinators", usage: "most Store coordinators tracked", show: func(c *Config) string { return strconv.Itoa(c.Policy.MaxCoordinators) }},
	{env: feedback.EnvScaleOK, flag: "scale-ok", usage: "rate scale at level ok, 0 to 1", show: func(c *Config) string { return fmtFloat(c.Policy.Scale(feedback.LevelOK)) }},
	{env: feedback.EnvScaleSoft, flag: "scale-soft", usage: "rate scale at level soft, 0 to 1", show: func(c *Config) string { return fmtFloat(c.Policy.Scale(feedback.LevelSoft)) }},
	{env: feedback.EnvScaleHard, flag: "scale-hard", usage: "rate scale at level hard, 0 to 1", show: func(c *Config) string { return fmtFloat(c.Policy.Scale(feedback.LevelHard)) }},
	{env: "PULSE_HTTP_ADDR", flag: "http-addr", usage: "HTTP address for /metrics, /healthz, /readyz, /state", show: func(c *Config) string { return c.HTTPAddr }},
	{env: "PULSE_LOG_LEVEL", flag: "log-level", usage: "debug, info, warn or error", show: func(c *Config) string { return strings.ToLower(c.LogLevel.String()) }},
	{env: "PULSE_LOG_FORMAT", flag: "log-format", usage: "text or json", show: func(c *Config) string { return c.LogFormat }},
	{env: "PULSE_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", usage: "deadline for the whole shutdown", show: func(c *Config) string { return c.ShutdownTimeout.String() }},
	// Trace export: the standard OpenTelemetry variables, environment only (README "Tracing").
	{env: telemetry.EnvSDKDisabled, show: func(c *Config) string { return strconv.FormatBool(c.Tracing.Disabled) }},
	{env: telemetry.EnvTracesExporter, show: func(c *Config) string { return c.Tracing.Exporter }},
	{env: telemetry.EnvEndpoint, show: func(c *Config) string { return transport.RedactURLs(c.Tracing.Endpoint) }},
	{env: telemetry.EnvTracesEndpoint, show: func(c *Config) string { return transport.RedactURLs(c.Tracing.TracesEndpoint) }},
	{env: telemetry.EnvProtocol, show: func(c *Config) string { return c.Tracing.Protocol }},
	{env: telemetry.EnvServiceName, show: func(c *Config) string { return c.Tracing.ServiceName }},
	{env: telemetry.EnvSampler, show: func(c *Config) string { return c.Tracing.Sampler }},
	{env: telemetry.EnvSamplerArg, show: func(c *Config) string { return fmtFloat(c.Tracing.Ratio) }},
}

// overrides holds the values given by flags, keyed by the variable they override.
type overrides map[string]string

// flagOverrides registers the overridable settings' flags on fs (see register) and returns
// the overrides they collect.
func flagOverrides(fs *flag.FlagSet, only ...string) overrides {
	o := overrides{}
	o.register(fs, only...)
	return o
}

// register adds one flag per overridable setting to fs, or only for the variables named in
// only when it is not empty.
func (o overrides) register(fs *flag.FlagSet, only ...string) {
	for _, s := range settings {
		if s.flag == "" || len(only) > 0 && !slices.Contains(only, s.env) {
			continue
		}
		set := func(v string) error { o[s.env] = v; return nil }
		usage := s.usage + " (" + s.env + ")"
		if s.isBool {
			fs.BoolFunc(s.flag, usage, set)
		} else {
			fs.Func(s.flag, usage, set)
		}
	}
}

// flagFor returns the flag that overrides variable env, or "".
func flagFor(env string) string {
	for _, s := range settings {
		if s.env == env {
			return s.flag
		}
	}
	return ""
}

// Load reads the configuration from the environment through lookup, with the values in
// over (from flags) taking precedence. Every invalid value is reported as an *envconf.Error
// naming the variable (and flag), the value and what is accepted.
func Load(lookup func(string) (string, bool), over overrides) (Config, error) {
	c := Config{sources: map[string]string{}}
	look := func(name string) (string, bool) {
		if v, ok := over[name]; ok {
			c.sources[name] = "flag"
			return v, true
		}
		v, ok := lookup(name)
		if ok && strings.TrimSpace(v) != "" {
			c.sources[name] = "env"
		}
		return v, ok
	}
	err := c.load(look)
	if err == nil {
		return c, nil
	}
	var ee *envconf.Error
	if errors.As(err, &ee) {
		if _, fromFlag := over[ee.Var]; fromFlag {
			ee.Flag = flagFor(ee.Var)
		}
	}
	return Config{}, err
}

func (c *Config) load(look func(string) (string, bool)) error {
	bus, err := transport.FromEnv(look)
	if err != nil {
		return err
	}
	c.Bus = bus
	if c.Embedded, err = embedded.FromEnv(look); err != nil {
		return err
	}
	if c.Policy, err = feedback.PolicyFromEnv(look); err != nil {
		return err
	}
	if c.Tracing, err = telemetry.TracingFromEnv(look); err != nil {
		return err
	}
	c.Enabled = true
	c.HTTPAddr = DefaultHTTPAddr
	c.FeedbackStream = DefaultFeedbackStream
	c.LogFormat = DefaultLogFormat
	c.ShutdownTimeout = DefaultShutdownTimeout
	level := DefaultLogLevel
	r := envconf.Reader{Lookup: look}
	r.Bool("PULSE_ENABLED", &c.Enabled)
	r.String("PULSE_HTTP_ADDR", &c.HTTPAddr)
	cc, err := feedback.ConsumerConfigFromEnv(look)
	if err != nil {
		return err
	}
	if cc.Stream != "" {
		c.FeedbackStream = cc.Stream
	}
	c.SharedGroup = cc.SharedGroup
	r.OneOf("PULSE_LOG_LEVEL", &level, "debug", "info", "warn", "error")
	r.OneOf("PULSE_LOG_FORMAT", &c.LogFormat, "text", "json")
	r.Duration("PULSE_SHUTDOWN_TIMEOUT", &c.ShutdownTimeout)
	if r.Err != nil {
		return r.Err
	}
	if err := c.LogLevel.UnmarshalText([]byte(level)); err != nil {
		return &envconf.Error{Var: "PULSE_LOG_LEVEL", Value: level, Accepted: "debug, info, warn, error"}
	}
	if err := c.validate(); err != nil {
		return err
	}
	if c.sources["PULSE_CONSUMER_NAME"] == "" {
		c.Bus.Consumer = replicaName(c.Embedded.DataDir, c.HTTPAddr)
		c.sources["PULSE_CONSUMER_NAME"] = "derived from the host name, PULSE_DATA_DIR and PULSE_HTTP_ADDR"
	}
	return nil
}

// replicaName is this replica's default PULSE_CONSUMER_NAME: stable across its restarts
// (the same host, data directory and HTTP address) and unique between replicas, on one host
// or several (see feedback.ReplicaName). Two replicas that must not split the feedback
// events need nothing set.
func replicaName(dataDir, httpAddr string) string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	return feedback.ReplicaName(host, dataDir, httpAddr)
}

// validate checks the service's own settings; the bus's, backend settings included, were
// checked by transport.FromEnv (each backend's by the check its driver registered).
func (c *Config) validate() error {
	c.Bus = c.Bus.WithDefaults()
	b := &c.Bus
	if !slices.Contains(transport.Backends(), b.Backend) {
		return &envconf.Error{Var: "EVENT_BUS_BACKEND", Value: b.Backend, Accepted: strings.Join(transport.Backends(), ", ")}
	}
	if err := checkHostPort(c.HTTPAddr); err != nil {
		return &envconf.Error{Var: "PULSE_HTTP_ADDR", Value: c.HTTPAddr, Accepted: "host:port, e.g. 127.0.0.1:9464 (port 0 picks a free one) (" + err.Error() + ")"}
	}
	if !transport.ValidStreamName(c.FeedbackStream) {
		return &envconf.Error{Var: "PULSE_FEEDBACK_STREAM", Value: c.FeedbackStream, Accepted: "dot-separated tokens of letters, digits, '_' and '-', e.g. telemetry.feedback"}
	}
	return nil
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// checkExposure refuses an embedded JetStream server listening beyond this machine without
// PULSE_NATS_TOKEN: anyone who reaches it could publish a hard event, or delete the streams.
func (c *Config) checkExposure() error {
	if !c.Enabled || !c.EmbeddedNATS() || embedded.Loopback(c.Embedded.Listen) {
		return nil
	}
	if t := c.Bus.NATSToken; t != "" && t != "unset" {
		return nil
	}
	ce := &envconf.Error{Var: "PULSE_NATS_LISTEN", Value: c.Embedded.Listen,
		Accepted: "a loopback address such as 127.0.0.1:4223, or any address once PULSE_NATS_TOKEN is set: " +
			"without a token the embedded server lets anyone who reaches it publish, consume and delete streams"}
	if c.sources["PULSE_NATS_LISTEN"] == "flag" {
		ce.Flag = flagFor(ce.Var)
	}
	return ce
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("not host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("port must be 0 to 65535")
	}
	return nil
}

// maskToken shows whether a secret is set without showing it.
func maskToken(tok string) string {
	if tok == "" || tok == "unset" {
		return "unset"
	}
	return masked
}

// Print writes the effective configuration, one VAR=value per line with where the value
// came from (default, env or flag); secrets are masked.
func (c *Config) Print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range settings {
		src := c.sources[s.env]
		if src == "" {
			src = "default"
		}
		fmt.Fprintf(tw, "%s=%s\t# %s\n", s.env, s.show(c), src)
	}
	return tw.Flush()
}

// masked stands in for a secret in printed configuration, as in the drivers' redacted URLs.
const masked = "xxxxx"
