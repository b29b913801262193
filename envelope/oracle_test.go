package envelope

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// The oracles the one grammar (grammar.go) is checked against: encoding/json's Valid and
// Compact, and the encoder's payload handling before the single-pass walk, appendPyJSON once
// per v1 form.

// oldCompactJSON is encoding/json's compaction (string and number text kept as it is).
func oldCompactJSON(src []byte) ([]byte, error) {
	var b bytes.Buffer
	err := json.Compact(&b, src)
	return b.Bytes(), err
}

// pyStyle is a way Python writes JSON.
type pyStyle struct {
	// spaced selects json.dumps' default ", " and ": " separators instead of "," and ":".
	spaced bool
	// ascii escapes every character outside ' '..'~' as \uXXXX (json.dumps' ensure_ascii);
	// otherwise non-ASCII characters and DEL are written as UTF-8 (pydantic's dump).
	ascii bool
}

var (
	// pyDumps is json.dumps(value): the v1 wire form of a payload.
	pyDumps = pyStyle{spaced: true, ascii: true}
	// pyCompact is pydantic's model_dump_json(): what the Python core hashes.
	pyCompact = pyStyle{}
)

// oldAppendPyJSON appends the JSON text src re-written the way Python writes the value it
// denotes: insignificant whitespace dropped, the separators of st, and every string
// re-escaped from its decoded value (so "\u0041" and "A", "\/" and "/" no longer differ, and
// Go's HTML escapes such as "\u003c" become "<"). Object key order and number text are kept
// as they are; payload types use Float so that numbers read as Python's. src must be valid
// JSON (a string may hold invalid UTF-8, which becomes U+FFFD). The result does not depend on
// how src was laid out or escaped: oldAppendPyJSON of its own output returns that output.
func oldAppendPyJSON(dst, src []byte, st pyStyle) []byte {
	for i := 0; i < len(src); {
		switch c := src[i]; c {
		case ' ', '\t', '\n', '\r':
			i++
		case '"':
			var n int
			dst, n = oldAppendPyStringToken(dst, src[i:], st.ascii)
			i += n
		case ',':
			dst = append(dst, ',')
			if st.spaced {
				dst = append(dst, ' ')
			}
			i++
		case ':':
			dst = append(dst, ':')
			if st.spaced {
				dst = append(dst, ' ')
			}
			i++
		default:
			dst = append(dst, c)
			i++
		}
	}
	return dst
}

// oldAppendPyStringToken re-escapes the JSON string token at the start of src (which begins with
// its opening quote) and returns how many bytes of src it spans. Escaped surrogate pairs are
// joined; a lone escaped surrogate stays a \uXXXX escape, as Python keeps it.
func oldAppendPyStringToken(dst, src []byte, ascii bool) ([]byte, int) {
	dst = append(dst, '"')
	for i := 1; i < len(src); {
		c := src[i]
		switch {
		case c == '"':
			return append(dst, '"'), i + 1
		case c >= 0x20 && c < 0x7f && c != '\\':
			dst = append(dst, c)
			i++
		case c == '\\':
			esc := src[i+1]
			if esc != 'u' {
				dst = appendPyRune(dst, rune(unescapeChar(esc)), ascii)
				i += 2
				continue
			}
			u := hex4(src[i+2:])
			i += 6
			if utf16.IsSurrogate(u) {
				if u < 0xdc00 && i+6 <= len(src) && src[i] == '\\' && src[i+1] == 'u' {
					if lo := hex4(src[i+2:]); lo >= 0xdc00 && lo <= 0xdfff {
						dst = appendPyRune(dst, utf16.DecodeRune(u, lo), ascii)
						i += 6
						continue
					}
				}
				dst = appendEscape(dst, u)
				continue
			}
			dst = appendPyRune(dst, u, ascii)
		case c < utf8.RuneSelf:
			dst = appendPyRune(dst, rune(c), ascii)
			i++
		default:
			r, size := utf8.DecodeRune(src[i:])
			dst = appendPyRune(dst, r, ascii)
			i += size
		}
	}
	return dst, len(src) // unreachable for valid JSON
}

// checkScanners compares the scanners with the oracle on src: the same verdict as the reader
// (which now also refuses bytes after a NUL that ends the value, as the old check did not,
// and as encoding/json does), and for valid input the same bytes in every form.
func checkScanners(t *testing.T, src []byte) {
	t.Helper()
	original := bytes.Clone(src)
	err := validJSON(src)
	valid := err == nil
	if len(src) < maxDepth && json.Valid(src) != valid {
		t.Fatalf("validJSON %v, json.Valid %v: %.300q", err, json.Valid(src), src)
	}
	dumps, compact, perr := appendPyForms([]byte("x"), nil, src)
	if (perr == nil) != valid || perr != nil && perr.Error() != err.Error() {
		t.Fatalf("appendPyForms %v, validJSON %v: %.300q", perr, err, src)
	}
	w := walkJSON(src, walkCheck, nil, nil)
	if (w.error() == nil) != valid {
		t.Fatalf("walkCheck %v, validJSON %v: %.300q", w.error(), err, src)
	}
	space := w.space
	got, cerr := compactJSON(src)
	if (cerr == nil) != valid || cerr != nil && cerr.Error() != err.Error() {
		t.Fatalf("compactJSON error %v, validJSON %v: %.300q", cerr, err, src)
	}
	if valid {
		if want := oldAppendPyJSON([]byte("x"), src, pyDumps); !bytes.Equal(dumps, want) {
			t.Fatalf("dumps form of %.300q:\n got %q\nwant %q", src, dumps, want)
		}
		if want := oldAppendPyJSON(nil, src, pyCompact); !bytes.Equal(compact, want) {
			t.Fatalf("compact form of %.300q:\n got %q\nwant %q", src, compact, want)
		}
		// encoding/json refuses the deepest nesting this package accepts.
		if want, werr := oldCompactJSON(src); werr == nil {
			if !bytes.Equal(got, want) {
				t.Fatalf("compactJSON of %.300q:\n got %q\nwant %q", src, got, want)
			}
			if space == bytes.Equal(want, src) {
				t.Fatalf("walkCheck space=%v for %.300q", space, src)
			}
		}
	}
	if !bytes.Equal(src, original) {
		t.Fatalf("a scanner modified its input")
	}
}

// scannerSeeds are edge cases of the JSON grammar and of Python's string forms.
var scannerSeeds = []string{
	`{}`, ` { } `, `[]`, `[ ]`, `{"a":1}`, "{\"a\" :\t1 ,\n\"b\":[1, 2 ,3]}\r\n", `"s"`, `0`, `-0`, `-0.5e+10`, `1E5`, `12.25`,
	`true`, `false`, `null`, `[true,false,null]`, `{"a":{"b":{"c":[{}]}}}`,
	`{"s":"\u0041\/\"\\\b\f\n\r\t"}`, `{"s":"\u00e9\u2028\ud834\udd1e\ud800\udc00"}`, `{"s":"\ud800"}`, `{"s":"\udc00\ud800x"}`,
	`{"s":"\ud800\u0041"}`, `{"s":"\ud800\ud800\udc00"}`, "{\"s\":\"caf\u00e9 \U0001d11e \x7f\"}", "{\"s\":\"\xff\xed\xa0\x80\xc3\"}",
	`{"s":"\u0000\u001f\u007f\u0080\uffff"}`, `{"\u00e9":"k"}`, `{"<>&":"\u003c\u003e\u0026"}`,
	// invalid
	``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,}`, `[1,]`, `[,1]`, `{"a":1}}`, `{"a":1} x`, "{}\x00", "{}\x00garbage", "{} \x00",
	`01`, `-`, `-a`, `1.`, `.5`, `1e`, `1e+`, `+1`, `tru`, `nul`, `truex`, `"abc`, `"\x"`, `"\u12"`, `"\u12g4"`, `"\ud800\udcXg"`,
	"\"a\x01\"", "\"a\nb\"", `{"a":"b"`, `["a"`, `[1 2]`, `{"a" "b"}`, `{1:2}`, "\x00", `"\`, `"\u`, `{"s":"\ud800\u`,
	strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1),
	strings.Repeat("[", maxDepth+2) + strings.Repeat("]", maxDepth+2),
}

// TestScannersMatchOracle proves the single-pass scanners give the old encoder's verdict and
// bytes on grammar edge cases and on thousands of random payloads (valid ones with any
// spacing, escapes and characters, and corruptions of them).
func TestScannersMatchOracle(t *testing.T) {
	for _, s := range scannerSeeds {
		checkScanners(t, []byte(s))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := genJSON(rng, nil, 0)
		checkScanners(t, b)
		if len(b) > 0 {
			c := bytes.Clone(b)
			switch rng.IntN(3) {
			case 0:
				c = c[:rng.IntN(len(c))]
			case 1:
				const bytesAt = "{}[],:\"\\ 0a-.eu\x00\xff"
				c[rng.IntN(len(c))] = bytesAt[rng.IntN(len(bytesAt))]
			default:
				at := rng.IntN(len(c) + 1)
				const inserts = "{}[],:\"\\ 0"
				c = append(c[:at:at], append([]byte{inserts[rng.IntN(len(inserts))]}, b[at:]...)...)
			}
			checkScanners(t, c)
		}
	}
}

// FuzzPayloadScanners explores checkScanners from the edge cases:
// `go test -run x -fuzz FuzzPayloadScanners ./envelope`.
func FuzzPayloadScanners(f *testing.F) {
	for _, s := range scannerSeeds {
		if len(s) < 1000 {
			f.Add([]byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkScanners(t, b) })
}

// genJSON appends a random JSON value with random insignificant whitespace.
func genJSON(rng *rand.Rand, b []byte, depth int) []byte {
	ws := func() {
		for rng.IntN(4) == 0 {
			b = append(b, " \t\n\r"[rng.IntN(4)])
		}
	}
	ws()
	k := rng.IntN(8)
	if depth > 4 && k < 2 {
		k += 2
	}
	switch k {
	case 0:
		b = append(b, '{')
		for i, n := 0, rng.IntN(4); i < n; i++ {
			if i > 0 {
				b = append(b, ',')
			}
			ws()
			b = genString(rng, b)
			ws()
			b = append(b, ':')
			b = genJSON(rng, b, depth+1)
		}
		ws()
		b = append(b, '}')
	case 1:
		b = append(b, '[')
		for i, n := 0, rng.IntN(4); i < n; i++ {
			if i > 0 {
				b = append(b, ',')
			}
			b = genJSON(rng, b, depth+1)
		}
		ws()
		b = append(b, ']')
	case 2, 3:
		b = genString(rng, b)
	case 4:
		b = append(b, []string{"true", "false", "null"}[rng.IntN(3)]...)
	default:
		b = append(b, []string{"0", "-0", "12", "-3.25", "1e5", "2.5E-3", "1729263600.1", "-0.0", "100000000000000000000"}[rng.IntN(9)]...)
	}
	ws()
	return b
}

// genString appends a JSON string token with random characters and escapes, raw non-ASCII
// and invalid UTF-8 included.
func genString(rng *rand.Rand, b []byte) []byte {
	b = append(b, '"')
	for i, n := 0, rng.IntN(12); i < n; i++ {
		switch rng.IntN(10) {
		case 0:
			b = append(b, '\\', `"\/bfnrt`[rng.IntN(8)])
		case 1:
			u := []rune{0, 0x1f, 0x41, 0x7f, 0x80, 0xe9, 0x2028, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xfffd, 0xffff}[rng.IntN(13)]
			b = append(b, '\\', 'u')
			for _, c := range []byte(strings.ToUpper(string(appendEscape(nil, u)[2:]))) {
				if rng.IntN(2) == 0 {
					c = byte(strings.ToLower(string(c))[0])
				}
				b = append(b, c)
			}
		case 2:
			hi, lo := utf16.EncodeRune(rune(0x10000 + rng.IntN(0xfffff)))
			b = appendEscape(appendEscape(b, hi), lo)
		case 3:
			b = utf8.AppendRune(b, []rune{0xe9, 0x2028, 0x1d11e, 0xfffd, 0x7f, 0x4e2d}[rng.IntN(6)])
		case 4:
			b = append(b, []string{"\xff", "\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"}[rng.IntN(5)]...)
		default:
			const plain = "abc XYZ09<>&'~"
			b = append(b, plain[rng.IntN(len(plain))])
		}
	}
	return append(b, '"')
}
