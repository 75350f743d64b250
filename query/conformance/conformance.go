// Package conformance runs Prometheus's PromQL test data (the .test files of
// promql/promqltest in the prometheus module) against any storage: a single
// shard, or a whole cluster seen through one node. Each eval command is a
// subtest named file:line, so failures are counted per eval.
package conformance

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
)

// block is one command of a promqltest script with its body lines.
type block struct {
	line int // 1-based line of the command
	text string
	kind string // load, clear or eval
}

// splitScript splits a promqltest script into commands the way its parser
// does: a command runs until the first blank or comment line.
func splitScript(src string) []block {
	lines := strings.Split(src, "\n")
	var out []block
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		b := block{line: i + 1}
		switch kw := strings.ToLower(strings.Fields(l)[0]); {
		case kw == "clear":
			b.kind = "clear"
		case strings.HasPrefix(kw, "load"):
			b.kind = "load"
		default:
			b.kind = "eval"
		}
		j := i + 1
		for ; b.kind != "clear" && j < len(lines); j++ {
			t := strings.TrimSpace(lines[j])
			if t == "" || strings.HasPrefix(t, "#") {
				break
			}
		}
		b.text = strings.Join(lines[i:j], "\n") + "\n"
		out = append(out, b)
		i = j - 1
	}
	return out
}

// noClose lets one loaded storage serve several single-eval scripts.
type noClose struct{ storage.Storage }

func (noClose) Close() error { return nil }

// TestdataDir is promql/promqltest/testdata of the prometheus module in use.
func TestdataDir(t testing.TB) string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/prometheus/prometheus").Output()
	require.NoError(t, err)
	return filepath.Join(strings.TrimSpace(string(out)), "promql", "promqltest", "testdata")
}

var nameRe = regexp.MustCompile(`[^A-Za-z0-9_.:-]+`)

// Run runs every eval of every test file. open makes an empty storage for
// each group of load commands; it is closed when the group is done.
// knownFailures, keyed by "file:line" of the eval, are skipped with their
// reason unless KILN_CONFORMANCE_ALL is set.
func Run(t *testing.T, open func(testing.TB) storage.Storage, knownFailures map[string]string) {
	RunEngine(t, open, knownFailures, promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery))
}

// RunEngine is Run with another engine than promqltest's, which it must
// configure as promqltest.NewTestEngine does (a wrapper around one).
func RunEngine(t *testing.T, open func(testing.TB) storage.Storage, knownFailures map[string]string, engine promql.QueryEngine) {
	files, err := filepath.Glob(filepath.Join(TestdataDir(t), "*.test"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	runAll := os.Getenv("KILN_CONFORMANCE_ALL") != ""

	for _, fn := range files {
		src, err := os.ReadFile(fn)
		require.NoError(t, err)
		base := filepath.Base(fn)
		t.Run(base, func(t *testing.T) {
			var db storage.Storage
			var loads []string
			reset := func() {
				if db != nil {
					require.NoError(t, db.Close())
					db = nil
				}
			}
			defer reset()
			for _, b := range splitScript(string(src)) {
				switch b.kind {
				case "clear":
					reset()
					loads = nil
				case "load":
					reset()
					loads = append(loads, b.text)
				case "eval":
					if db == nil {
						db = open(t)
						if len(loads) > 0 {
							promqltest.RunTestWithStorage(t, strings.Join(loads, "\n"), engine, func(testing.TB) storage.Storage { return noClose{db} })
						}
					}
					id := base + ":" + strconv.Itoa(b.line)
					t.Run(nameRe.ReplaceAllString(id, "_"), func(t *testing.T) {
						if reason, ok := knownFailures[id]; ok && !runAll {
							t.Skip("known failure: " + reason)
						}
						promqltest.RunTestWithStorage(t, b.text, engine, func(testing.TB) storage.Storage { return noClose{db} })
					})
				}
			}
		})
	}
}
