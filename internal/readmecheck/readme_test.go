// Package readmecheck holds the test that compiles the program of the README's "Using the
// library" section, so that what a Go user copies from it builds.
package readmecheck

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestREADMELibraryProgramCompiles extracts the Go program of the README's library section
// and builds it as a package of this module (through a build overlay: nothing is written
// into the tree).
func TestREADMELibraryProgramCompiles(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	require.NoError(t, err)
	section := string(readme)
	start := strings.Index(section, "\n## Using the library\n")
	require.GreaterOrEqual(t, start, 0, "the README has a library section")
	section = section[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(section, -1)
	require.NotEmpty(t, blocks, "the library section has a Go program")
	var prog string
	for _, b := range blocks {
		if strings.HasPrefix(b[1], "package main\n") {
			prog = b[1]
		}
	}
	require.NotEmpty(t, prog, "one block of the library section is a whole program (package main)")

	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	require.NoError(t, os.WriteFile(src, []byte(prog), 0o644))
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {filepath.Join(root, "internal", "readmecheck", "prog", "main.go"): src}})
	require.NoError(t, err)
	ov := filepath.Join(dir, "overlay.json")
	require.NoError(t, os.WriteFile(ov, overlay, 0o644))
	gobin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command builds the README's program")
	cmd := exec.Command(gobin, "build", "-overlay", ov, "-o", filepath.Join(dir, "prog"), "./internal/readmecheck/prog")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the README's program does not build:\n%s", out)
}
