package transport_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/transport"
)

// TestRedactURLs proves that passwords and tokens never reach logs or `pulse config`, for
// NATS lists and Redis URLs alike.
func TestRedactURLs(t *testing.T) {
	tests := map[string]string{
		"nats://u:pw@h:4222":                  "nats://u:xxxxx@h:4222",
		"nats://tok@h:4222,tls://a:b@h2:4222": "nats://xxxxx@h:4222,tls://a:xxxxx@h2:4222",
		"nats://h:4222":                       "nats://h:4222",
		"redis://:secret@h:6379/0":            "redis://:xxxxx@h:6379/0",
		"rediss://user:secret@h/2":            "rediss://user:xxxxx@h/2",
		"redis://h:6379/0":                    "redis://h:6379/0",
		"redis://us%er:pw@h:6379\x7f":         "xxxxx",
		"redis://h:6379/0?password=pw-secret": "redis://h:6379/0?password=xxxxx",
		"redis://h/0?db=1&Sentinel_Password=s&dial_timeout=1s&auth%5Ftoken=t": "redis://h/0?db=1&Sentinel_Password=xxxxx&dial_timeout=1s&auth%5Ftoken=xxxxx",
		"nats://h:4222?token=t0k":        "nats://h:4222?token=xxxxx",
		"redis://h:6379\x7f?password=pw": "xxxxx",
	}
	for in, want := range tests {
		require.Equal(t, want, transport.RedactURLs(in), in)
	}
}
