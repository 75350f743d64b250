package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		check   func(t *testing.T, c Config)
		wantErr string // substring; empty means success
	}{
		{
			name: "defaults",
			check: func(t *testing.T, c Config) {
				require.Equal(t, DefaultStoragePath, c.StoragePath)
				require.Equal(t, 15*24*time.Hour, c.Retention)
				require.Equal(t, "0.0.0.0:9364", c.ListenAddress)
				require.Equal(t, 2*time.Minute, c.QueryTimeout)
				require.Equal(t, 50_000_000, c.QueryMaxSamples)
				require.Equal(t, 20, c.QueryMaxConcurrency)
				require.Equal(t, 5*time.Minute, c.LookbackDelta)
				require.Equal(t, "info", c.LogLevel)
				require.Equal(t, "logfmt", c.LogFormat)
				require.Equal(t, int64(64<<20), c.MaxRequestBytes)
				require.True(t, c.Embedded)
				require.Empty(t, c.ConfigFile)
				require.Len(t, c.Prom.ScrapeConfigs, 1)
				require.Equal(t, "kiln", c.Prom.ScrapeConfigs[0].JobName)
				require.Contains(t, c.ConfigYAML, "localhost:9364")
			},
		},
		{
			name: "every flag, double dash, both value forms",
			args: []string{
				"--storage.path=/var/lib/kiln",
				"--storage.retention.time", "2w",
				"--web.listen-address=127.0.0.1:9999",
				"--query.timeout=30s",
				"--query.max-samples=1000",
				"--query.max-concurrency", "4",
				"--query.lookback-delta=1m",
				"--log.level=debug",
				"--log.format=json",
				"--web.max-request-bytes=1GiB",
			},
			check: func(t *testing.T, c Config) {
				require.Equal(t, "/var/lib/kiln", c.StoragePath)
				require.Equal(t, 14*24*time.Hour, c.Retention)
				require.Equal(t, "127.0.0.1:9999", c.ListenAddress)
				require.Equal(t, 30*time.Second, c.QueryTimeout)
				require.Equal(t, 1000, c.QueryMaxSamples)
				require.Equal(t, 4, c.QueryMaxConcurrency)
				require.Equal(t, time.Minute, c.LookbackDelta)
				require.Equal(t, "debug", c.LogLevel)
				require.Equal(t, "json", c.LogFormat)
				require.Equal(t, int64(1<<30), c.MaxRequestBytes)
				// The embedded config scrapes the address actually listened on.
				require.Contains(t, c.ConfigYAML, "127.0.0.1:9999")
			},
		},
		{
			name: "single dash and plain byte count",
			args: []string{"-storage.retention.time=15d", "-web.max-request-bytes=1048576"},
			check: func(t *testing.T, c Config) {
				require.Equal(t, 15*24*time.Hour, c.Retention)
				require.Equal(t, int64(1<<20), c.MaxRequestBytes)
			},
		},
		{
			name: "version skips validation",
			args: []string{"--version", "--web.listen-address=nonsense"},
			check: func(t *testing.T, c Config) {
				require.True(t, c.PrintVersion)
				require.Nil(t, c.Prom)
			},
		},
		{name: "unknown flag", args: []string{"--storage.size=1"}, wantErr: "flag provided but not defined: --storage.size"},
		{name: "bad duration", args: []string{"--storage.retention.time=15x"}, wantErr: `invalid value "15x" for flag --storage.retention.time`},
		{name: "Go-only duration unit", args: []string{"--query.timeout=1us"}, wantErr: "--query.timeout"},
		{name: "zero retention", args: []string{"--storage.retention.time=0s"}, wantErr: "--storage.retention.time: must be positive"},
		{name: "bad size", args: []string{"--web.max-request-bytes=lots"}, wantErr: "--web.max-request-bytes"},
		{name: "bad log level", args: []string{"--log.level=trace"}, wantErr: "--log.level: must be one of debug|info|warn|error"},
		{name: "bad log format", args: []string{"--log.format=xml"}, wantErr: "--log.format"},
		{name: "bad listen address", args: []string{"--web.listen-address=9364"}, wantErr: "--web.listen-address"},
		{name: "bad port", args: []string{"--web.listen-address=:http"}, wantErr: `invalid port "http"`},
		{name: "negative samples", args: []string{"--query.max-samples=-1"}, wantErr: "--query.max-samples: must be positive"},
		{name: "missing value", args: []string{"--storage.path"}, wantErr: "flag needs an argument: --storage.path"},
		{name: "positional argument", args: []string{"serve"}, wantErr: `unexpected argument "serve"`},
		{name: "missing config file", args: []string{"--config.file=/nonexistent/kiln.yml"}, wantErr: "--config.file: read config file: open /nonexistent/kiln.yml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseFlags(tc.args)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			tc.check(t, c)
		})
	}
}

func TestParseFlagsHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		_, err := ParseFlags([]string{arg})
		require.ErrorIs(t, err, flag.ErrHelp)
	}
	var buf bytes.Buffer
	Usage(&buf)
	require.Contains(t, buf.String(), "--storage.path=./data\n")
	require.Contains(t, buf.String(), "--storage.retention.time=15d\n")
	require.Contains(t, buf.String(), "--version\n")
}

func TestClusterFlags(t *testing.T) {
	c, err := ParseFlags([]string{
		"--cluster.peer=10.0.0.1:9365", "--cluster.peer=10.0.0.2:9365,10.0.0.3:9365",
		"--cluster.replication-factor=2", "--cluster.write-consistency=all", "--cluster.zone=eu-1a",
	})
	require.NoError(t, err)
	require.Equal(t, []string{"10.0.0.1:9365", "10.0.0.2:9365", "10.0.0.3:9365"}, c.Cluster.Peers)
	require.Equal(t, 2, c.Cluster.ReplicationFactor)
	require.Equal(t, "all", c.Cluster.WriteConsistency)
	require.Equal(t, "eu-1a", c.Cluster.Zone)

	for _, tc := range []struct{ arg, want string }{
		{"--cluster.write-consistency=most", "--cluster.write-consistency"},
		{"--cluster.replication-factor=0", "--cluster.replication-factor: must be at least 1"},
		{"--cluster.bootstrap-expect=0", "--cluster.bootstrap-expect: must be at least 1"},
		{"--cluster.peer=nohost", "--cluster.peer"},
		{"--cluster.listen-address=:99999", "--cluster.listen-address"},
		{"--cluster.name=", "--cluster.name: must not be empty"},
	} {
		_, err := ParseFlags([]string{tc.arg})
		require.ErrorContains(t, err, tc.want, tc.arg)
	}
}

func TestResolveNodeName(t *testing.T) {
	dir := t.TempDir()
	name, err := resolveNodeName("", dir)
	require.NoError(t, err)
	require.NotEmpty(t, name)
	again, err := resolveNodeName("", dir)
	require.NoError(t, err)
	require.Equal(t, name, again, "a restarted node keeps its name")
	_, err = resolveNodeName("other", dir)
	require.ErrorContains(t, err, "keeps its name")
	named, err := resolveNodeName("n1", t.TempDir())
	require.NoError(t, err)
	require.Equal(t, "n1", named)
}

func TestAPIAdvertiseAddr(t *testing.T) {
	cl := ClusterConfig{ListenAddress: "10.1.2.3:9365"}
	require.Equal(t, "10.1.2.3:9364", apiAdvertiseAddr("", "0.0.0.0:9364", cl))
	require.Equal(t, "127.0.0.5:9364", apiAdvertiseAddr("", "127.0.0.5:9364", cl))
	require.Equal(t, "kiln-1:80", apiAdvertiseAddr("kiln-1:80", "0.0.0.0:9364", cl))
	cl.AdvertiseAddress = "192.0.2.7:9365"
	require.Equal(t, "192.0.2.7:9364", apiAdvertiseAddr("", "[::]:9364", cl))
}

func TestFlags(t *testing.T) {
	c, err := ParseFlags(nil)
	require.NoError(t, err)
	require.Equal(t, map[string]string{
		"storage.path":           "./data",
		"storage.retention.time": "15d",
		"storage.sync-interval":  "0s",
		"web.listen-address":     "0.0.0.0:9364",
		"web.max-request-bytes":  "64MiB",
		"config.file":            "",
		"query.timeout":          "2m",
		"query.max-samples":      "50000000",
		"query.parallelism":      "0",
		"query.max-concurrency":  "20",
		"query.lookback-delta":   "5m",
		"log.level":              "info",
		"log.format":             "logfmt",
		"query.partial-response": "false",

		"cluster.node-name":             "",
		"cluster.name":                  "kiln",
		"cluster.listen-address":        "0.0.0.0:9365",
		"cluster.advertise-address":     "",
		"cluster.peer":                  "",
		"cluster.zone":                  "",
		"cluster.raft-address":          "",
		"cluster.api-advertise-address": "",
		"cluster.bootstrap-expect":      "1",
		"cluster.replication-factor":    "3",
		"cluster.write-consistency":     "quorum",
		"cluster.anti-entropy-interval": "1h",
		"cluster.dead-node-timeout":     "5m",
		"cluster.leave-on-shutdown":     "false",
		"cluster.leave-timeout":         "5m",
		"cluster.max-concurrent-moves":  "2",
		"cluster.move-rate":             "64MiB",
	}, c.Flags())

	// The values Flags shows parse back into the same settings.
	c, err = ParseFlags([]string{"--storage.retention.time=36h", "--web.max-request-bytes=1536KiB", "--log.level=warn"})
	require.NoError(t, err)
	var args []string
	for name, value := range c.Flags() {
		args = append(args, "--"+name+"="+value)
	}
	again, err := ParseFlags(args)
	require.NoError(t, err)
	require.Equal(t, c.Flags(), again.Flags())
	require.Equal(t, 36*time.Hour, again.Retention)
	require.Equal(t, int64(1536<<10), again.MaxRequestBytes)
}

const promYAML = `global:
  scrape_interval: 30s
  external_labels:
    region: eu
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['localhost:9100']
  - job_name: files
    file_sd_configs:
      - files: ['targets/*.json']
  - job_name: k8s
    kubernetes_sd_configs:
      - role: pod
  - job_name: secret
    basic_auth:
      username: kiln
      password: hunter2
    static_configs:
      - targets: ['localhost:9101']
`

func TestLoadConfigFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		yaml    string
		check   func(t *testing.T, c Config)
		wantErr []string // substrings; empty means success
	}{
		{
			name: "prometheus.yml loads unchanged",
			yaml: promYAML,
			check: func(t *testing.T, c Config) {
				require.Len(t, c.Prom.ScrapeConfigs, 4)
				require.Equal(t, model.Duration(30*time.Second), c.Prom.GlobalConfig.ScrapeInterval)
				require.Equal(t, "eu", c.Prom.GlobalConfig.ExternalLabels.Get("region"))
				require.Equal(t, FileConfig{}, c.Kiln)
				require.False(t, c.Embedded)
				// Relative paths are resolved against the file's directory.
				require.Contains(t, c.ConfigYAML, filepath.Join(filepath.Dir(c.ConfigFile), "targets/*.json"))
				// Secrets never reach /api/v1/status/config.
				require.NotContains(t, c.ConfigYAML, "hunter2")
				require.Contains(t, c.ConfigYAML, "<secret>")
				require.NotContains(t, c.ConfigYAML, "kiln:")
			},
		},
		{
			name: "kiln section between prometheus sections",
			yaml: `global:
  scrape_interval: 30s
kiln:
  # Kiln's own settings.
  query:
    timeout: 1m
    max_samples: 1000
    lookback_delta: 10m
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['localhost:9100']
`,
			check: func(t *testing.T, c Config) {
				require.Equal(t, FileConfig{Query: QueryFileConfig{
					Timeout:       model.Duration(time.Minute),
					MaxSamples:    1000,
					LookbackDelta: model.Duration(10 * time.Minute),
				}}, c.Kiln)
				require.Len(t, c.Prom.ScrapeConfigs, 1)
				require.Equal(t, time.Minute, c.QueryTimeout)
				require.Equal(t, 1000, c.QueryMaxSamples)
				require.Equal(t, 10*time.Minute, c.LookbackDelta)
				require.Contains(t, c.ConfigYAML, "kiln:\n    query:\n        timeout: 1m\n")
			},
		},
		{
			name: "kiln section last, flow style inside",
			yaml: "scrape_configs: []\nkiln: {query: {timeout: 45s}}\n",
			check: func(t *testing.T, c Config) {
				require.Equal(t, 45*time.Second, c.QueryTimeout)
				require.Empty(t, c.Prom.ScrapeConfigs)
			},
		},
		{
			name: "whole file in flow style",
			yaml: "{global: {scrape_interval: 20s}, kiln: {query: {max_samples: 7}}}\n",
			check: func(t *testing.T, c Config) {
				require.Equal(t, model.Duration(20*time.Second), c.Prom.GlobalConfig.ScrapeInterval)
				require.Equal(t, 7, c.QueryMaxSamples)
			},
		},
		{
			name: "global only: nothing to scrape",
			yaml: "global:\n  scrape_interval: 10s\n",
			check: func(t *testing.T, c Config) {
				require.Empty(t, c.Prom.ScrapeConfigs)
				scfgs, err := c.Prom.GetScrapeConfigs()
				require.NoError(t, err)
				require.Empty(t, scfgs)
				require.False(t, c.Embedded)
			},
		},
		{
			name: "empty file: Prometheus defaults",
			yaml: "",
			check: func(t *testing.T, c Config) {
				require.Empty(t, c.Prom.ScrapeConfigs)
				require.Equal(t, model.Duration(time.Minute), c.Prom.GlobalConfig.ScrapeInterval)
			},
		},
		{
			name: "retention from storage.tsdb",
			yaml: "storage:\n  tsdb:\n    retention:\n      time: 30d\n",
			check: func(t *testing.T, c Config) {
				require.Equal(t, 30*24*time.Hour, c.Retention)
			},
		},
		{
			// The kiln section above must not shift Prometheus's line numbers.
			name:    "unknown prometheus field keeps its line number",
			yaml:    "kiln:\n  query:\n    timeout: 1m\nglobal:\n  scrape_intervl: 10s\n",
			wantErr: []string{"config file ", "line 5", "field scrape_intervl not found"},
		},
		{
			name:    "unknown kiln field",
			yaml:    "global: {}\nkiln:\n  query:\n    timeout: 1m\n    deadline: 2m\n",
			wantErr: []string{"kiln section", "line 5", "field deadline not found"},
		},
		{
			name:    "unknown kiln subsection",
			yaml:    "kiln:\n  cluster: {}\n",
			wantErr: []string{"kiln section", "field cluster not found"},
		},
		{
			name:    "bad duration",
			yaml:    "global:\n  scrape_interval: 10x\n",
			wantErr: []string{"config file ", `"10x"`},
		},
		{
			name:    "bad kiln duration",
			yaml:    "kiln:\n  query:\n    timeout: soon\n",
			wantErr: []string{"kiln section", `"soon"`},
		},
		{
			name:    "negative kiln value",
			yaml:    "kiln:\n  query:\n    max_samples: -5\n",
			wantErr: []string{"kiln.query.max_samples must not be negative"},
		},
		{
			name:    "malformed yaml",
			yaml:    "global:\n  scrape_interval: [10s\n",
			wantErr: []string{"config file ", "line"},
		},
		{
			name:    "invalid prometheus semantics",
			yaml:    "scrape_configs:\n  - job_name: a\n  - job_name: a\n",
			wantErr: []string{`found multiple scrape configs with job name "a"`},
		},
		{
			// See config_sd.go for why Consul is not compiled in.
			name:    "discovery Kiln does not include",
			yaml:    "scrape_configs:\n  - job_name: c\n    consul_sd_configs:\n      - server: localhost:8500\n",
			wantErr: []string{"line 3", "consul_sd_configs", "Kiln is built without this service discovery"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kiln.yml")
			require.NoError(t, os.WriteFile(path, []byte(tc.yaml), 0o600))

			// Through LoadConfigFile directly...
			prom, kiln, text, err := LoadConfigFile(path, nil)
			if len(tc.wantErr) > 0 {
				require.Error(t, err)
				for _, want := range tc.wantErr {
					require.ErrorContains(t, err, want)
				}
				require.ErrorContains(t, err, path)
				// ...and through ParseFlags, which names the flag.
				_, err = ParseFlags([]string{"--config.file=" + path})
				require.ErrorContains(t, err, "--config.file: config file "+path)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, prom)
			require.NotEmpty(t, text)

			c, err := ParseFlags([]string{"--config.file", path})
			require.NoError(t, err)
			require.Equal(t, kiln, c.Kiln)
			require.Equal(t, text, c.ConfigYAML)
			tc.check(t, c)
		})
	}
}

func TestConfigPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kiln.yml")
	write := func(s string) { require.NoError(t, os.WriteFile(path, []byte(s), 0o600)) }
	write("storage:\n  tsdb:\n    retention:\n      time: 30d\nkiln:\n  query:\n    timeout: 1m\n    max_samples: 10\n")

	// The file beats the defaults...
	c, err := ParseFlags([]string{"--config.file=" + path})
	require.NoError(t, err)
	require.Equal(t, 30*24*time.Hour, c.Retention)
	require.Equal(t, time.Minute, c.QueryTimeout)
	require.Equal(t, 10, c.QueryMaxSamples)
	require.Equal(t, DefaultLookbackDelta, c.LookbackDelta)
	require.Equal(t, "30d", c.Flags()["storage.retention.time"])

	// ...explicit flags beat the file, even when they equal the default.
	c, err = ParseFlags([]string{"--config.file=" + path, "--query.timeout=2m", "--storage.retention.time=7d"})
	require.NoError(t, err)
	require.Equal(t, 2*time.Minute, c.QueryTimeout)
	require.Equal(t, 7*24*time.Hour, c.Retention)
	require.Equal(t, 10, c.QueryMaxSamples)

	// A reload picks up file changes and restores defaults for removed
	// settings, still below the explicit flags.
	write("kiln:\n  query:\n    lookback_delta: 1m\n")
	r, err := c.Reload(nil)
	require.NoError(t, err)
	require.Equal(t, 2*time.Minute, r.QueryTimeout)
	require.Equal(t, 7*24*time.Hour, r.Retention)
	require.Equal(t, DefaultQueryMaxSamples, r.QueryMaxSamples)
	require.Equal(t, time.Minute, r.LookbackDelta)
	require.Equal(t, 10, c.QueryMaxSamples, "Reload must not change the receiver")

	// A broken file fails the reload and keeps what was running.
	write("kiln: [\n")
	r, err = r.Reload(nil)
	require.ErrorContains(t, err, path)
	require.Equal(t, time.Minute, r.LookbackDelta)

	// The embedded config has nothing to reload.
	e, err := ParseFlags(nil)
	require.NoError(t, err)
	r, err = e.Reload(nil)
	require.NoError(t, err)
	require.True(t, r.Embedded)
}

func TestDefaultPromConfig(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:9364":   "localhost:9364",
		":9364":          "localhost:9364",
		"[::]:9364":      "localhost:9364",
		"127.0.0.1:1234": "127.0.0.1:1234",
		"kiln-0:9364":    "kiln-0:9364",
		"[::1]:9364":     "[::1]:9364",
	} {
		t.Run(addr, func(t *testing.T) {
			cfg := DefaultPromConfig(addr)
			scfgs, err := cfg.GetScrapeConfigs()
			require.NoError(t, err)
			require.Len(t, scfgs, 1)
			require.Equal(t, "kiln", scfgs[0].JobName)
			require.Equal(t, "/metrics", scfgs[0].MetricsPath)
			require.Equal(t, model.Duration(15*time.Second), scfgs[0].ScrapeInterval)
			require.Contains(t, cfg.String(), want)
		})
	}
}

// Nodes that all listen on 0.0.0.0:9364 (containers) scrape themselves
// through localhost but label the samples with their advertised address, so
// a cluster's nodes never write the same series.
func TestDefaultPromConfigInstance(t *testing.T) {
	cfg := defaultPromConfig("0.0.0.0:9364", "node-2:9364")
	scfgs, err := cfg.GetScrapeConfigs()
	require.NoError(t, err)
	require.Contains(t, cfg.String(), "localhost:9364")
	require.Contains(t, cfg.String(), "instance: node-2:9364")
	require.Len(t, scfgs, 1)
	same := defaultPromConfig("127.0.0.1:9364", "127.0.0.1:9364")
	require.NotContains(t, same.String(), "instance:")
}

func TestLogger(t *testing.T) {
	c := DefaultConfig()
	c.LogLevel, c.LogFormat = "warn", "json"
	var buf bytes.Buffer
	logger := c.Logger(&buf)
	logger.Info("dropped")
	logger.Warn("kept", "k", "v")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 1)
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &rec))
	require.Equal(t, "kept", rec["msg"])
	require.Equal(t, "v", rec["k"])
}

func TestValidate(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())

	c := DefaultConfig()
	c.StoragePath, c.QueryMaxConcurrency = "", 0
	err := c.Validate()
	// Every problem is reported at once, each naming its flag.
	require.ErrorContains(t, err, "--storage.path: must not be empty")
	require.ErrorContains(t, err, "--query.max-concurrency: must be positive")
	require.False(t, errors.Is(err, flag.ErrHelp))
}
