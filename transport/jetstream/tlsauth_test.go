package jetstream_test

// Every way of signing in to an external NATS server and of trusting it, each against a
// nats-server configured for it, with keys and certificates generated here.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/envconf"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
	"github.com/pulse-bus/pulse/transport/jetstream"
)

// pki is a CA with a server certificate for 127.0.0.1 and a client certificate, as PEM files
// in a directory of the test's own.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return path
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	caKey := key()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pulse test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	leaf := func(serial int64, usage x509.ExtKeyUsage, name string) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		require.NoError(t, err)
		kder, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	p := pki{caFile: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf(2, x509.ExtKeyUsageServerAuth, "server")
	p.clientCert, p.clientKey = leaf(3, x509.ExtKeyUsageClientAuth, "client")
	return p
}

// serverTLS configures o for TLS with p's server certificate, verifying clients against p's
// CA when verify is set.
func (p pki) serverTLS(t *testing.T, o *server.Options, verify bool) {
	t.Helper()
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: p.serverCert, KeyFile: p.serverKey, CaFile: p.caFile, Verify: verify})
	require.NoError(t, err)
	o.TLS, o.TLSConfig, o.TLSVerify = true, tc, verify
}

// tlsURL is the tls:// URL of s.
func tlsURL(s *server.Server) string { return "tls://" + s.Addr().String() }

// requireWorks opens a Bus on cfg and round-trips one message through JetStream.
func requireWorks(t *testing.T, cfg transport.Config) {
	t.Helper()
	cfg.Backend = jetstream.Name
	b, err := transport.Open(context.Background(), cfg)
	require.NoError(t, err)
	defer b.Close()
	_, err = b.PublishRaw(context.Background(), "auth.check", driver.Message{Body: []byte(`{}`)})
	require.NoError(t, err)
	info, err := b.Driver().(driver.StreamAdmin).Info(context.Background(), "auth.check", "")
	require.NoError(t, err)
	require.EqualValues(t, 1, info.Length)
}

// requireRefused opens cfg, requires an error naming want and not wrapping ErrUnavailable
// (a setting to fix, not an outage to wait out), and no secret in it.
func requireRefused(t *testing.T, cfg transport.Config, want string, secrets ...string) {
	t.Helper()
	_, err := jetstream.Open(context.Background(), cfg)
	require.Error(t, err)
	require.ErrorContains(t, err, want)
	require.NotErrorIs(t, err, transport.ErrUnavailable)
	for _, s := range secrets {
		require.NotContains(t, err.Error(), s)
	}
}

// TestTokenSetting proves PULSE_NATS_TOKEN signs in to a server that requires a token (the
// embedded one's, and any other), a wrong one is refused naming the setting, never the
// token, and a server that wants credentials says which settings give them.
func TestTokenSetting(t *testing.T) {
	srv := startAuthServer(t, func(o *server.Options) { o.Authorization = "tok-s3cret" })
	url := srv.ClientURL()
	requireWorks(t, transport.Config{NATSURL: url, Namespace: "tok", NATSToken: "tok-s3cret"})
	requireRefused(t, transport.Config{NATSURL: url, NATSToken: "tok-wrong"}, "credentials refused (check PULSE_NATS_TOKEN)", "tok-wrong", "tok-s3cret")
	requireRefused(t, transport.Config{NATSURL: url}, "the server requires credentials: set PULSE_NATS_TOKEN")

	_, err := jetstream.Open(context.Background(), transport.Config{NATSURL: "nats://u:p@" + srv.Addr().String(), NATSToken: "tok-s3cret"})
	var ce *envconf.Error
	require.ErrorAs(t, err, &ce, "two ways of signing in")
	require.Contains(t, ce.Accepted, "one way of signing in at a time")
	require.NotContains(t, err.Error(), "tok-s3cret")
}

// TestNKeySeedFile proves PULSE_NATS_NKEY signs in with an nkey seed file, another user's
// seed is refused naming the setting, and a file holding no seed is a configuration error.
func TestNKeySeedFile(t *testing.T) {
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, err := user.PublicKey()
	require.NoError(t, err)
	srv := startAuthServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	seedFile := func(kp nkeys.KeyPair) string {
		seed, err := kp.Seed()
		require.NoError(t, err)
		f := filepath.Join(t.TempDir(), "user.nk")
		require.NoError(t, os.WriteFile(f, seed, 0o600))
		return f
	}
	requireWorks(t, transport.Config{NATSURL: srv.ClientURL(), Namespace: "nk", NATSNKeyFile: seedFile(user)})
	stranger, err := nkeys.CreateUser()
	require.NoError(t, err)
	requireRefused(t, transport.Config{NATSURL: srv.ClientURL(), NATSNKeyFile: seedFile(stranger)}, "credentials refused (check PULSE_NATS_NKEY)")

	junk := filepath.Join(t.TempDir(), "junk.nk")
	require.NoError(t, os.WriteFile(junk, []byte("not a seed"), 0o600))
	_, err = jetstream.Open(context.Background(), transport.Config{NATSURL: srv.ClientURL(), NATSNKeyFile: junk})
	var ce *envconf.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "PULSE_NATS_NKEY", ce.Var)
}

// operator is a NATS operator with a system account and one JetStream-enabled account, and
// a way to issue user credentials in it.
type operator struct {
	claims            *jwt.OperatorClaims
	resolver          *server.MemAccResolver
	sysPub, acctPub   string
	acct, otherIssuer nkeys.KeyPair
}

func newOperator(t *testing.T) operator {
	t.Helper()
	okp, err := nkeys.CreateOperator()
	require.NoError(t, err)
	opub, err := okp.PublicKey()
	require.NoError(t, err)
	account := func(js bool) (nkeys.KeyPair, string, string) {
		kp, err := nkeys.CreateAccount()
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		ac := jwt.NewAccountClaims(pub)
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		tok, err := ac.Encode(okp)
		require.NoError(t, err)
		return kp, pub, tok
	}
	_, sysPub, sysJWT := account(false)
	acct, acctPub, acctJWT := account(true)
	oc := jwt.NewOperatorClaims(opub)
	oc.SystemAccount = sysPub
	res := &server.MemAccResolver{}
	require.NoError(t, res.Store(sysPub, sysJWT))
	require.NoError(t, res.Store(acctPub, acctJWT))
	other, err := nkeys.CreateAccount() // an account this operator never signed
	require.NoError(t, err)
	return operator{claims: oc, resolver: res, sysPub: sysPub, acctPub: acctPub, acct: acct, otherIssuer: other}
}

func (op operator) configure(o *server.Options) {
	o.TrustedOperators = []*jwt.OperatorClaims{op.claims}
	o.AccountResolver = op.resolver
	o.SystemAccount = op.sysPub
}

// creds writes a .creds file for a new user signed by issuer.
func (op operator) creds(t *testing.T, issuer nkeys.KeyPair) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	require.NoError(t, err)
	upub, err := ukp.PublicKey()
	require.NoError(t, err)
	uc := jwt.NewUserClaims(upub)
	tok, err := uc.Encode(issuer)
	require.NoError(t, err)
	seed, err := ukp.Seed()
	require.NoError(t, err)
	file, err := jwt.FormatUserConfig(tok, seed)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), fmt.Sprintf("user-%s.creds", upub[:8]))
	require.NoError(t, os.WriteFile(path, file, 0o600))
	return path
}

// TestCredsOverTLS proves the production set-up: a server in operator (JWT) mode behind TLS
// with a private CA; PULSE_NATS_CREDS plus PULSE_NATS_TLS_CA and a tls:// URL work end to
// end (JetStream included); credentials of an account the operator never signed are refused
// naming PULSE_NATS_CREDS; without the CA the certificate is not trusted, naming
// PULSE_NATS_TLS_CA; and a nats:// URL to the TLS-only server upgrades to TLS.
func TestCredsOverTLS(t *testing.T) {
	p := newPKI(t)
	op := newOperator(t)
	srv := startAuthServer(t, func(o *server.Options) {
		op.configure(o)
		p.serverTLS(t, o, false)
	})
	good := op.creds(t, op.acct)
	requireWorks(t, transport.Config{NATSURL: tlsURL(srv), Namespace: "jwt", NATSCredsFile: good, NATSTLSCA: p.caFile})
	requireRefused(t, transport.Config{NATSURL: tlsURL(srv), NATSCredsFile: op.creds(t, op.otherIssuer), NATSTLSCA: p.caFile},
		"credentials refused (check PULSE_NATS_CREDS)")
	requireRefused(t, transport.Config{NATSURL: tlsURL(srv), NATSCredsFile: good}, "not trusted (PULSE_NATS_TLS_CA names the CAs to trust")
	requireWorks(t, transport.Config{NATSURL: "nats://" + srv.Addr().String(), Namespace: "jwt2", NATSCredsFile: good, NATSTLSCA: p.caFile})
}

// TestMutualTLS proves a server that verifies clients takes the certificate of
// PULSE_NATS_TLS_CERT and PULSE_NATS_TLS_KEY, and that without one the error names them.
func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	srv := startAuthServer(t, func(o *server.Options) { p.serverTLS(t, o, true) })
	requireWorks(t, transport.Config{NATSURL: tlsURL(srv), Namespace: "mtls", NATSTLSCA: p.caFile, NATSTLSCert: p.clientCert, NATSTLSKey: p.clientKey})
	requireRefused(t, transport.Config{NATSURL: tlsURL(srv), NATSTLSCA: p.caFile}, "PULSE_NATS_TLS_CERT and PULSE_NATS_TLS_KEY")

	_, err := jetstream.Open(context.Background(), transport.Config{NATSURL: tlsURL(srv), NATSTLSCert: p.clientCert})
	var ce *envconf.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "PULSE_NATS_TLS_CERT", ce.Var)
	require.Contains(t, ce.Accepted, "PULSE_NATS_TLS_KEY is unset")
}
