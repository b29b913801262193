package envelope

import (
	"encoding/binary"
	"math/bits"
	"sync"
)

// plainEnd returns the index of the first byte at or after i that is not a plainByte. Strings
// are mostly plain, so it tests eight bytes at a time: a word holds only plain bytes unless
// one of its bytes is below ' ', above '~', a quote or a backslash (the usual has-zero-byte
// tests; where a test misfires, it is only on a byte after one that truly matches, and the
// lowest match is the one used).
func plainEnd(b []byte, i int) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for ; i+8 <= len(b); i += 8 {
		v := binary.LittleEndian.Uint64(b[i:])
		q := v ^ ('"' * ones)
		bs := v ^ ('\\' * ones)
		special := (v-0x20*ones) & ^v | // a byte below ' ' (or the top bit set: see below)
			(v + 0x01*ones) | v | // a byte above '~'
			(q-ones) & ^q | // a quote
			(bs-ones) & ^bs // a backslash
		if special &= highs; special != 0 {
			return i + bits.TrailingZeros64(special)/8
		}
	}
	for i < len(b) && plainByte[b[i]] {
		i++
	}
	return i
}

func isHex4(b []byte) bool {
	return isHex(b[0]) && isHex(b[1]) && isHex(b[2]) && isHex(b[3])
}

// pyBufs are the scratch buffers of a v1 encode.
type pyBufs struct{ dumps, compact []byte }

// maxPooledBuf bounds the scratch buffers kept for reuse, so one huge payload does not pin
// its buffers for ever.
const maxPooledBuf = 64 << 10

var pyBufPool = sync.Pool{New: func() any { return new(pyBufs) }}

func getPyBufs() *pyBufs { return pyBufPool.Get().(*pyBufs) }

func putPyBufs(b *pyBufs) {
	if cap(b.dumps) > maxPooledBuf || cap(b.compact) > maxPooledBuf {
		return
	}
	pyBufPool.Put(b)
}
