// Package pyfixtures is the one copy of the wire fixtures of the Python market-data-core:
// message bodies byte for byte as its JsonCodec writes them (README.md says which). Every test
// that needs them reads them here; pyfixtures_test.go checks them byte for byte against
// ../shared/fixtures beside the repository, or the directory PULSE_SHARED_FIXTURES names,
// and against what Python itself writes (generate.py).
package pyfixtures

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"sort"
)

//go:embed *.json README.md
var files embed.FS

// Names returns the fixtures' file names, sorted.
func Names() []string {
	paths, err := fs.Glob(files, "*.json")
	if err != nil {
		panic(err) // the pattern is constant and valid
	}
	sort.Strings(paths)
	return paths
}

// File returns the bytes of a file of the fixture set (a fixture or README.md), as they are.
func File(name string) ([]byte, error) {
	return files.ReadFile(name)
}

// Message returns fixture name's message body: the file without its trailing newline (the
// newline is the file's, not the wire's). It panics on an unknown name, which is a test's
// own mistake.
func Message(name string) []byte {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(fmt.Sprintf("pyfixtures: %v (have %v)", err, Names()))
	}
	return bytes.TrimSuffix(b, []byte("\n"))
}
