package transport

import (
	"net/url"
	"strings"
)

// RedactURLs masks the credentials in one or several comma-separated broker URLs, for logs,
// error messages and `pulse config`: user:password becomes user:xxxxx, a bare user part (a
// NATS token) becomes xxxxx, and an unparsable URL that holds an '@' is masked whole.
func RedactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		u, err := url.Parse(p)
		if err != nil {
			if strings.Contains(p, "@") {
				parts[i] = "xxxxx"
			}
			continue
		}
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
