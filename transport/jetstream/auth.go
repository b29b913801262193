package jetstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
)

// The environment variables of the driver's credentials and TLS (transport.Config).
const (
	EnvURL     = "NATS_URL"
	EnvCreds   = "PULSE_NATS_CREDS"
	EnvToken   = "PULSE_NATS_TOKEN"
	EnvNKey    = "PULSE_NATS_NKEY"
	EnvTLSCA   = "PULSE_NATS_TLS_CA"
	EnvTLSCert = "PULSE_NATS_TLS_CERT"
	EnvTLSKey  = "PULSE_NATS_TLS_KEY"
)

// CheckConfig validates the driver's settings of cfg without connecting: NATS_URL, at most
// one way of signing in (credentials in NATS_URL, PULSE_NATS_TOKEN, PULSE_NATS_CREDS or
// PULSE_NATS_NKEY), readable credential files, a CA file of PEM certificates, and a client
// certificate and key that belong together. Errors are *envconf.Error naming the
// variable; secrets are never in them.
func CheckConfig(cfg transport.Config) error {
	servers, err := serverURLs(cfg.WithDefaults())
	if err != nil {
		return err
	}
	_, err = authOptions(cfg, servers)
	return err
}

// signIn names how cfg signs in to servers, for error messages ("" when it does not).
func signIn(cfg transport.Config, servers []string) string {
	var ways []string
	if urlCredentials(servers) {
		ways = append(ways, "the credentials in "+EnvURL)
	}
	for _, w := range []struct {
		set  bool
		name string
	}{
		{cfg.NATSToken != "" && cfg.NATSToken != "unset", EnvToken},
		{cfg.NATSCredsFile != "", EnvCreds},
		{cfg.NATSNKeyFile != "", EnvNKey},
	} {
		if w.set {
			ways = append(ways, w.name)
		}
	}
	return strings.Join(ways, ", ")
}

func urlCredentials(servers []string) bool {
	for _, s := range servers {
		if u, err := url.Parse(s); err == nil && u.User != nil {
			return true
		}
	}
	return false
}

// authOptions are the nats.go options of cfg's credentials and TLS.
func authOptions(cfg transport.Config, servers []string) ([]nats.Option, error) {
	if ways := signIn(cfg, servers); strings.Contains(ways, ",") {
		return nil, &envconf.Error{Var: EnvToken, Value: "(masked)",
			Accepted: "one way of signing in at a time; set now: " + ways}
	}
	var opts []nats.Option
	if tok := cfg.NATSToken; tok != "" && tok != "unset" {
		opts = append(opts, nats.Token(tok))
	}
	if f := cfg.NATSCredsFile; f != "" {
		if _, err := os.ReadFile(f); err != nil {
			return nil, &envconf.Error{Var: EnvCreds, Value: f, Accepted: "a readable NATS credentials file (.creds, a user JWT and its nkey seed): " + err.Error()}
		}
		opts = append(opts, nats.UserCredentials(f))
	}
	if f := cfg.NATSNKeyFile; f != "" {
		bad := func(why string) error {
			return &envconf.Error{Var: EnvNKey, Value: f, Accepted: "a readable file holding a user nkey seed (SU…): " + why}
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, bad(err.Error())
		}
		if _, err := nkeys.ParseDecoratedNKey(raw); err != nil {
			return nil, bad("no nkey seed in it")
		}
		o, err := nats.NkeyOptionFromSeed(f)
		if err != nil {
			return nil, bad("no user nkey seed in it")
		}
		opts = append(opts, o)
	}
	if f := cfg.NATSTLSCA; f != "" {
		pem, err := os.ReadFile(f)
		if err != nil || !x509.NewCertPool().AppendCertsFromPEM(pem) {
			why := "no PEM certificate in it"
			if err != nil {
				why = err.Error()
			}
			return nil, &envconf.Error{Var: EnvTLSCA, Value: f, Accepted: "a readable file of PEM CA certificates: " + why}
		}
		opts = append(opts, nats.RootCAs(f))
	}
	switch cert, key := cfg.NATSTLSCert, cfg.NATSTLSKey; {
	case cert == "" && key == "":
	case cert == "" || key == "":
		v, set, unset := EnvTLSCert, cert, EnvTLSKey
		if cert == "" {
			v, set, unset = EnvTLSKey, key, EnvTLSCert
		}
		return nil, &envconf.Error{Var: v, Value: set, Accepted: "a client certificate and its key together: " + unset + " is unset"}
	default:
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			return nil, &envconf.Error{Var: EnvTLSCert, Value: cert, Accepted: "a PEM client certificate whose key is " + EnvTLSKey + ": " + err.Error()}
		}
		opts = append(opts, nats.ClientCert(cert, key))
	}
	return opts, nil
}

// connectError explains a failed first connection: refused credentials and TLS that cannot
// work are configuration errors naming the settings (never the secrets); anything else is
// the broker being away, wrapping transport.ErrUnavailable.
func connectError(cfg transport.Config, servers []string, err error) error {
	where := redactList(servers)
	ways := signIn(cfg, servers)
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	msg := err.Error()
	switch {
	case errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked):
		if ways == "" {
			return fmt.Errorf("jetstream: connect to %s: the server requires credentials: set %s, or a user:password or token in %s, or %s or %s: %w",
				where, EnvToken, EnvURL, EnvCreds, EnvNKey, err)
		}
		return fmt.Errorf("jetstream: connect to %s: credentials refused (check %s): %w", where, ways, err)
	case errors.As(err, &verify) || errors.As(err, &unknownCA) || errors.As(err, &hostname):
		return fmt.Errorf("jetstream: connect to %s: the server's TLS certificate is not trusted (%s names the CAs to trust; the URL's host must be in the certificate): %w", where, EnvTLSCA, err)
	case strings.Contains(msg, "certificate required") || strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority"),
		// With TLS 1.3 the server's refusal may arrive only as the connection closing after
		// the handshake; nats.go marks that case, since it is how a refused client
		// certificate looks from the client.
		errors.Is(err, nats.ErrTLS) && strings.Contains(msg, "after TLS handshake"):
		return fmt.Errorf("jetstream: connect to %s: the server refused this client's TLS certificate (%s and %s give one it trusts): %w", where, EnvTLSCert, EnvTLSKey, err)
	case errors.Is(err, nats.ErrSecureConnRequired):
		return fmt.Errorf("jetstream: connect to %s: the server requires TLS (use tls:// in %s, with %s if its CA is private): %w", where, EnvURL, EnvTLSCA, err)
	}
	hint := ""
	if cfg.NATSURL == "" {
		hint = " (NATS_URL is unset, so this is the embedded server's default address: is `pulse run` up?)"
	}
	return fmt.Errorf("jetstream: connect to %s%s: %w: %w", where, hint, transport.ErrUnavailable, err)
}
