package envelope

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPlainEnd checks the word-at-a-time scan against the byte table: every byte value at
// every position of a word, after every length of plain prefix, and the first of two
// non-plain bytes (the word tests may misfire after a true match, never before).
func TestPlainEnd(t *testing.T) {
	slow := func(b []byte, i int) int {
		for i < len(b) && plainByte[b[i]] {
			i++
		}
		return i
	}
	buf := make([]byte, 24)
	for c := range 256 {
		for pos := range len(buf) {
			for _, second := range []byte{'a', 0x00, 0xff, '"', 0x7f} {
				for k := range buf {
					buf[k] = 'a'
				}
				buf[pos] = byte(c)
				if pos+1 < len(buf) {
					buf[pos+1] = second
				}
				for start := range min(pos+1, 9) {
					require.Equal(t, slow(buf, start), plainEnd(buf, start), "byte %#x at %d, then %#x, from %d", c, pos, second, start)
				}
			}
		}
	}
	require.Equal(t, 0, plainEnd(nil, 0))
	require.Equal(t, 5, plainEnd([]byte("plain"), 0))
}

// TestHexSum checks the word-at-a-time hex against encoding/hex on sums of many inputs and on
// every byte value.
func TestHexSum(t *testing.T) {
	var all [sha256.Size]byte
	for b := range 256 {
		all[b%sha256.Size] = byte(b)
		if b%sha256.Size == sha256.Size-1 {
			var got [2 * sha256.Size]byte
			hexSum(got[:], &all)
			require.Equal(t, hex.EncodeToString(all[:]), string(got[:]))
		}
	}
	for i := range 1000 {
		sum := sha256.Sum256([]byte(strconv.Itoa(i)))
		var got [2 * sha256.Size]byte
		hexSum(got[:], &sum)
		require.Equal(t, hex.EncodeToString(sum[:]), string(got[:]))
	}
}
