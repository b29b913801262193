package transport

import (
	"net/url"
	"strings"
)

// RedactURLs masks the credentials in one or several comma-separated broker URLs, for logs,
// error messages and `pulse config`: user:password becomes user:xxxxx, a bare user part (a
// NATS token) becomes xxxxx, the value of a query parameter whose name speaks of a secret
// (password, pass, token, secret, auth, key, in any case) becomes xxxxx, and an unparsable
// URL that holds an '@' or a query is masked whole.
func RedactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		u, err := url.Parse(p)
		if err != nil {
			if strings.ContainsAny(p, "@?") {
				parts[i] = "xxxxx"
			}
			continue
		}
		u.RawQuery = redactQuery(u.RawQuery)
		if u.User != nil {
			if _, hasPass := u.User.Password(); hasPass {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			} else {
				u.User = url.User("xxxxx")
			}
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// secretWords are the parts of a query parameter's name that make its value a secret.
var secretWords = []string{"pass", "token", "secret", "auth", "key", "cred"}

// redactQuery masks the values of secret parameters in a raw query, leaving the rest as it is.
func redactQuery(raw string) string {
	if raw == "" {
		return raw
	}
	pairs := strings.Split(raw, "&")
	for i, kv := range pairs {
		name, _, hasValue := strings.Cut(kv, "=")
		lower := strings.ToLower(name)
		if unescaped, err := url.QueryUnescape(name); err == nil {
			lower = strings.ToLower(unescaped)
		}
		for _, w := range secretWords {
			if hasValue && strings.Contains(lower, w) {
				pairs[i] = name + "=xxxxx"
				break
			}
		}
	}
	return strings.Join(pairs, "&")
}
