package redis

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/internal/redistest"
	"github.com/pulse-bus/pulse/transport"
	"github.com/pulse-bus/pulse/transport/driver"
)

// bulk is a RESP bulk string.
func bulk(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }

// array is a RESP array of already-encoded elements.
func array(elems ...string) string {
	return "*" + strconv.Itoa(len(elems)) + "\r\n" + strings.Join(elems, "")
}

// replyEntry is one stream entry of an XREADGROUP reply.
func replyEntry(id string, kv ...string) string {
	fields := make([]string, len(kv))
	for i, s := range kv {
		fields[i] = bulk(s)
	}
	return array(bulk(id), array(fields...))
}

// readerOf is a respConn reading reply, for the parser alone.
func readerOf(reply string) *respConn {
	return &respConn{br: bufio.NewReaderSize(strings.NewReader(reply), readBufSize)}
}

// TestReadStreams reads XREADGROUP replies, well-formed and not, as Redis 7 writes them under
// RESP2. Every malformed reply is an error, never a panic, and never a silently shortened batch.
func TestReadStreams(t *testing.T) {
	big := strings.Repeat("x", readBufSize+10) // larger than the read buffer
	tests := []struct {
		name    string
		reply   string
		want    []entry
		wantErr error  // matched with errors.Is
		errText string // or contained in the error
	}{
		{name: "timeout", reply: "*-1\r\n"},
		{name: "RESP3 null", reply: "_\r\n"},
		{name: "no entries for the key", reply: array(array(bulk("k"), "*0\r\n"))},
		{
			name:  "entries",
			reply: array(array(bulk("k"), array(replyEntry("1-0", "data", "{}"), replyEntry("1-1", "data", `{"a":1}`)))),
			want:  []entry{{id: "1-0", msg: driver.Message{Body: []byte("{}")}}, {id: "1-1", msg: driver.Message{Body: []byte(`{"a":1}`)}}},
		},
		{
			name:  "headers beside data, the last data wins (as redis-py reads it)",
			reply: array(array(bulk("k"), array(replyEntry("2-0", "reason", "poison", "data", "d1", "data", "d2")))),
			want:  []entry{{id: "2-0", msg: driver.Message{Body: []byte("d2")}, fields: []string{"reason", "poison"}}},
		},
		{
			name: "each entry has its own headers, in the order listed",
			reply: array(array(bulk("k"), array(replyEntry("2-1", "data", "a", "traceparent", "t1", "x", "1"),
				replyEntry("2-2", "data", "b"), replyEntry("2-3", "traceparent", "t3", "data", "c")))),
			want: []entry{
				{id: "2-1", msg: driver.Message{Body: []byte("a")}, fields: []string{"traceparent", "t1", "x", "1"}},
				{id: "2-2", msg: driver.Message{Body: []byte("b")}},
				{id: "2-3", msg: driver.Message{Body: []byte("c")}, fields: []string{"traceparent", "t3"}},
			},
		},
		{
			name:  "an entry deleted since (no fields) reads as an empty body",
			reply: array(array(bulk("k"), array(array(bulk("3-0"), "*-1\r\n")))),
			want:  []entry{{id: "3-0"}},
		},
		{
			name:  "an empty data field",
			reply: array(array(bulk("k"), array(replyEntry("3-1", "data", "")))),
			want:  []entry{{id: "3-1"}},
		},
		{
			name:  "bodies and headers larger than the read buffer",
			reply: array(array(bulk("k"), array(replyEntry("4-0", "h", big, "data", big)))),
			want:  []entry{{id: "4-0", msg: driver.Message{Body: []byte(big)}, fields: []string{"h", big}}},
		},
		{
			name:  "other streams are skipped",
			reply: array(array(bulk("other"), array(replyEntry("5-0", "data", "x"))), array(bulk("k"), array(replyEntry("5-1", "data", "y")))),
			want:  []entry{{id: "5-1", msg: driver.Message{Body: []byte("y")}}},
		},
		{name: "error reply", reply: "-NOGROUP No such key 'k' or consumer group 'g'\r\n", errText: "NOGROUP No such key"},
		{name: "not an array", reply: "+OK\r\n", wantErr: errProtocol},
		{name: "line without CR", reply: "*1\n", wantErr: errProtocol},
		{name: "no length", reply: "*\r\n", wantErr: errProtocol},
		{name: "bad length", reply: "*x\r\n", wantErr: errProtocol},
		{name: "bulk string too long", reply: array(array("$999999999999\r\n", "*0\r\n")), wantErr: errProtocol},
		{name: "negative length", reply: "*-2\r\n", wantErr: errProtocol},
		{name: "stream pair of three", reply: array(array(bulk("k"), "*0\r\n", bulk("x"))), wantErr: errProtocol},
		{name: "entry of one element", reply: array(array(bulk("k"), array(array(bulk("7-0"))))), wantErr: errProtocol},
		{name: "entry without id", reply: array(array(bulk("k"), array(array(bulk(""), "*0\r\n")))), wantErr: errProtocol},
		{name: "odd field list", reply: array(array(bulk("k"), array(replyEntry("8-0", "data")))), wantErr: errProtocol},
		{name: "integer where a bulk string belongs", reply: array(array(":1\r\n", "*0\r\n")), wantErr: errProtocol},
		{name: "bulk string without CRLF", reply: array(array(bulk("k"), array(array("$3\r\n8-0xx", "*0\r\n")))), wantErr: errProtocol},
		{name: "data without CRLF", reply: array(array(bulk("k"), array(array(bulk("9-0"), array(bulk("data"), "$1\r\nabc\r\n"))))), wantErr: errProtocol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readerOf(tc.reply).readStreams("k")
			switch {
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
				require.Nil(t, got)
			case tc.errText != "":
				require.ErrorContains(t, err, tc.errText)
				var reply respError
				require.ErrorAs(t, err, &reply, "an error reply leaves the connection usable")
				require.True(t, isNoGroup(err))
				var redisErr goredis.Error
				require.ErrorAs(t, err, &redisErr, "classified as go-redis classifies replies")
			default:
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
			}
		})
	}
}

// TestReadStreamsTruncated: a reply cut anywhere is an error.
func TestReadStreamsTruncated(t *testing.T) {
	full := array(array(bulk("k"), array(replyEntry("6-0", "h", "v", "data", "abc"), replyEntry("6-1", "data", "de"))))
	for n := range len(full) {
		_, err := readerOf(full[:n]).readStreams("k")
		require.Error(t, err, "cut after %d bytes", n)
		require.True(t, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF), "cut after %d bytes: %v", n, err)
	}
}

// TestReadStreamsBodiesIndependent: bodies of one read share buffers, but appending to one can
// never write into the next.
func TestReadStreamsBodiesIndependent(t *testing.T) {
	got, err := readerOf(array(array(bulk("k"), array(replyEntry("1-0", "data", "aa"), replyEntry("1-1", "data", "bb"))))).readStreams("k")
	require.NoError(t, err)
	require.Len(t, got, 2)
	_ = append(got[0].msg.Body, "XX"...)
	require.Equal(t, "bb", string(got[1].msg.Body))
}

// FuzzReadStreams: any reply is read or refused with an error, without panicking, and an
// accepted reply's entries all have ids.
func FuzzReadStreams(f *testing.F) {
	f.Add(array(array(bulk("k"), array(replyEntry("1-0", "data", "{}"), replyEntry("1-1", "h", "v", "data", "x")))))
	f.Add("*-1\r\n")
	f.Add("-NOGROUP x\r\n")
	f.Add(array(array(bulk("k"), array(array(bulk("3-0"), "*-1\r\n")))))
	f.Fuzz(func(t *testing.T, reply string) {
		got, err := readerOf(reply).readStreams("k")
		if err != nil {
			return
		}
		for _, e := range got {
			if e.id == "" {
				t.Fatalf("accepted an entry without id from %q", reply)
			}
		}
	})
}

// TestReadConnAuthAndDatabase: the reading connection authenticates (password alone, and ACL
// user and password) and selects the URL's database as go-redis does, so that a subscription
// reads the entries a publisher on the same URL wrote; a wrong password is a clear error.
func TestReadConnAuthAndDatabase(t *testing.T) {
	srv := redistest.StartT(t) // its own server: it gets a password
	admin := rawClient(t, srv.URL())
	ctx := context.Background()
	require.NoError(t, admin.ConfigSet(ctx, "requirepass", "s3cret").Err())
	require.NoError(t, admin.Do(ctx, "auth", "s3cret").Err())
	require.NoError(t, admin.Do(ctx, "acl", "setuser", "app", "on", ">app-pw", "~*", "&*", "+@all").Err())

	for _, url := range []string{
		"redis://:s3cret@" + srv.Addr() + "/3",
		"redis://app:app-pw@" + srv.Addr() + "/5",
	} {
		t.Run(transport.RedactURLs(url), func(t *testing.T) {
			cfg := transport.Config{Backend: Name, RedisURL: url, Namespace: uniqueNS(t), Logger: testLogger(t)}
			d := openDriver(t, cfg)
			_, err := d.Publish(ctx, "s", []driver.Message{{Body: []byte(`{"n":1}`)}})
			require.NoError(t, err)
			s := sub(t, d, "s", "g", "c1", time.Minute)
			rctx, cancel := context.WithTimeout(ctx, waitFor)
			defer cancel()
			ds, err := s.Receive(rctx, 10)
			require.NoError(t, err)
			require.Len(t, ds, 1)
			require.Equal(t, `{"n":1}`, string(ds[0].Body))
			require.NoError(t, s.Ack(ctx, ds))
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		opts, err := ParseURL("redis://app:wrong@" + srv.Addr() + "/0")
		require.NoError(t, err)
		_, err = dialResp(ctx, opts, "x")
		require.ErrorContains(t, err, "AUTH")
		require.ErrorContains(t, err, "WRONGPASS")
		require.NotContains(t, err.Error(), "wrong", "the password is not in the error")
	})
}

// TestReadConnBrokenConnection: a connection that dies mid-reply is an I/O error (the fetcher
// drops the connection and dials afresh), not a respError.
func TestReadConnBrokenConnection(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	rc := &respConn{conn: client, br: bufio.NewReaderSize(client, readBufSize), readTO: time.Second}
	go func() {
		buf := make([]byte, 512)
		_, _ = server.Read(buf) // the XREADGROUP
		_, _ = server.Write([]byte(array(array(bulk("k")))[:12]))
		server.Close()
	}()
	_, err := rc.readGroup("k", "g", "c", 10, time.Millisecond)
	require.Error(t, err)
	var reply respError
	require.False(t, errors.As(err, &reply))
}

// selfSignedCert writes a self-signed certificate for 127.0.0.1 and its key to dir.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pulse test redis"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

// TestTLS: with a rediss:// URL every connection of the driver — the go-redis client, the
// publishing pool and a subscription's reader — speaks TLS, and the server's certificate is
// verified: an untrusted one is refused, and accepted only with skip_verify=true.
func TestTLS(t *testing.T) {
	certFile, keyFile := selfSignedCert(t, t.TempDir())
	srv, err := redistest.StartTLS(certFile, keyFile)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	ctx := context.Background()

	t.Run("untrusted certificate", func(t *testing.T) {
		_, err := Open(ctx, transport.Config{Backend: Name, RedisURL: "rediss://" + srv.TLSAddr() + "/0", Namespace: uniqueNS(t), Logger: testLogger(t)})
		require.ErrorContains(t, err, "certificate")
	})

	cfg := transport.Config{Backend: Name, RedisURL: "rediss://" + srv.TLSAddr() + "/2?skip_verify=true", Namespace: uniqueNS(t), Logger: testLogger(t)}
	d := openDriver(t, cfg)
	ids := publish(t, d, "s", bodies(3))
	s := sub(t, d, "s", "g", "c1", time.Minute)
	got := receiveN(t, s, 3)
	for i, dl := range got {
		require.Equal(t, ids[i], dl.TransportID)
	}
	require.NoError(t, s.Ack(ctx, got))

	plain := rawClient(t, "redis://"+srv.Addr()+"/2") // the test's view, on the plain port
	p, err := plain.XPending(ctx, cfg.Namespace+":s", "g").Result()
	require.NoError(t, err)
	require.Zero(t, p.Count, "the ack went through")
	list, err := plain.ClientList(ctx).Result()
	require.NoError(t, err)
	for _, name := range []string{d.nodes.single.pool.name, readerName(cfg.Namespace+":s", "g", "c1")} {
		require.Contains(t, list, "name="+name+" ", "a connection of the driver's own")
	}
}

// TestOpenWithClientOptions proves a program can hand the driver the go-redis options it
// already has — here a Dialer of its own doing TLS with its own CA pool — and that every
// connection of the driver (go-redis's, the publishing pool's, a subscription's reader) is
// made with them, the hot paths included.
func TestOpenWithClientOptions(t *testing.T) {
	certFile, keyFile := selfSignedCert(t, t.TempDir())
	srv, err := redistest.StartTLS(certFile, keyFile)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	pem, err := os.ReadFile(certFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	var dials atomic.Int64
	tlsConf := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	opts := &goredis.Options{
		Addr: srv.TLSAddr(), DB: 3,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			d := tls.Dialer{Config: tlsConf}
			return d.DialContext(ctx, network, addr)
		},
	}
	ctx := context.Background()
	cfg := transport.Config{Backend: Name, RedisURL: "redis://ignored.invalid:1/0", Namespace: uniqueNS(t), Logger: testLogger(t)}
	d, err := OpenWith(ctx, cfg, Options{Client: opts})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, d.Close()) })
	ids := publish(t, d, "s", bodies(2))
	s := sub(t, d, "s", "g", "c1", time.Minute)
	got := receiveN(t, s, 2)
	require.Equal(t, ids[0], got[0].TransportID)
	require.NoError(t, s.Ack(ctx, got))
	require.GreaterOrEqual(t, dials.Load(), int64(3), "go-redis's client, the pool and the reader all dial through the given Dialer")
	plain := rawClient(t, "redis://"+srv.Addr()+"/3")
	n, err := plain.XLen(ctx, cfg.Namespace+":s").Result()
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "in the database the options name")
}

// TestTracedEntriesAllocateNothingEach: the headers beside `data` (a traceparent on every
// traced message) are read into the read's shared buffers, so a reply of 200 traced entries
// allocates about as much as one of 20 — not a map per entry, which was most of what tracing
// cost the consume path (transport/redis/tracing_bench_test.go).
func TestTracedEntriesAllocateNothingEach(t *testing.T) {
	reply := func(n int) string {
		entries := make([]string, n)
		for i := range entries {
			entries[i] = replyEntry("1-"+strconv.Itoa(i), "data", `{"v":1,"payload":{"level":"ok"}}`,
				"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
		}
		return array(array(bulk("k"), array(entries...)))
	}
	allocs := func(n int) float64 {
		r := reply(n)
		return testing.AllocsPerRun(20, func() {
			got, err := readerOf(r).readStreams("k")
			if err != nil || len(got) != n || got[n-1].fields[1][:3] != "00-" {
				t.Fatalf("read %d entries, err %v", len(got), err)
			}
		})
	}
	few, many := allocs(20), allocs(200)
	require.LessOrEqual(t, many-few, 4.0, "allocations for 20 traced entries: %v, for 200: %v", few, many)
}
