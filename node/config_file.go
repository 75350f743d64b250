package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	promconfig "github.com/prometheus/prometheus/config"
	"go.yaml.in/yaml/v3"
)

// kilnKey is the top-level key of Kiln's section in the configuration file.
const kilnKey = "kiln"

// FileConfig is Kiln's own section of the configuration file, the top-level
// `kiln:` key. Unknown fields are errors, as they are in the rest of the
// file. A value here replaces the default of the matching flag; a flag given
// on the command line still wins.
//
//	kiln:
//	  query:
//	    timeout: 1m          # --query.timeout
//	    max_samples: 1000000 # --query.max-samples
//	    lookback_delta: 10m  # --query.lookback-delta
type FileConfig struct {
	Query QueryFileConfig `yaml:"query,omitempty"`
}

// QueryFileConfig holds the query limits that may also be set by flags.
// They live in the file too so that a configuration reload can change them
// without a restart. Zero means "not set".
type QueryFileConfig struct {
	Timeout       model.Duration `yaml:"timeout,omitempty"`
	MaxSamples    int            `yaml:"max_samples,omitempty"`
	LookbackDelta model.Duration `yaml:"lookback_delta,omitempty"`
}

func (f FileConfig) validate() error {
	var errs []error
	if f.Query.Timeout < 0 {
		errs = append(errs, fmt.Errorf("kiln.query.timeout must not be negative, got %s", f.Query.Timeout))
	}
	if f.Query.MaxSamples < 0 {
		errs = append(errs, fmt.Errorf("kiln.query.max_samples must not be negative, got %d", f.Query.MaxSamples))
	}
	if f.Query.LookbackDelta < 0 {
		errs = append(errs, fmt.Errorf("kiln.query.lookback_delta must not be negative, got %s", f.Query.LookbackDelta))
	}
	return errors.Join(errs...)
}

// LoadConfigFile reads a configuration file in the prometheus.yml format.
// The `kiln:` section is cut out and decoded into FileConfig; the rest goes
// to Prometheus's config.Load unchanged, so that its validation, defaults
// and line numbers in error messages are exactly Prometheus's. Relative
// paths in the file are resolved against the file's directory, and
// scrape_config_files are checked now rather than at the first scrape.
//
// The returned string is the configuration as /api/v1/status/config shows
// it: re-marshalled, with secrets hidden, followed by the kiln section.
func LoadConfigFile(path string, logger *slog.Logger) (*promconfig.Config, FileConfig, string, error) {
	if logger == nil {
		logger = promslog.NewNopLogger()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, FileConfig{}, "", fmt.Errorf("read config file: %w", err)
	}
	promYAML, kiln, hasKiln, err := splitKilnSection(data)
	if err != nil {
		return nil, FileConfig{}, "", fmt.Errorf("config file %s: %w", path, err)
	}
	prom, err := promconfig.Load(promYAML, logger)
	if err != nil {
		if strings.Contains(err.Error(), "_sd_configs not found in type config.") {
			// Otherwise the message reads as a typo in a valid Prometheus file.
			err = fmt.Errorf("%w (Kiln is built without this service discovery, see node/config_sd.go)", err)
		}
		return nil, FileConfig{}, "", fmt.Errorf("config file %s: %w", path, err)
	}
	prom.SetDirectory(filepath.Dir(path))
	if _, err := prom.GetScrapeConfigs(); err != nil {
		return nil, FileConfig{}, "", fmt.Errorf("config file %s: %w", path, err)
	}
	warnUnsupported(prom, logger)

	text := prom.String()
	if hasKiln {
		section, err := yaml.Marshal(map[string]FileConfig{kilnKey: kiln})
		if err != nil {
			return nil, FileConfig{}, "", fmt.Errorf("config file %s: marshal kiln section: %w", path, err)
		}
		text += string(section)
	}
	return prom, kiln, text, nil
}

// warnUnsupported logs the Prometheus settings that load fine but that Kiln
// does not act on, so that nobody relies on them by accident.
func warnUnsupported(prom *promconfig.Config, logger *slog.Logger) {
	if t := prom.StorageConfig.TSDBConfig; t != nil && t.Retention != nil {
		if t.Retention.Size != 0 || t.Retention.Percentage != 0 {
			logger.Warn("Kiln only supports time-based retention; storage.tsdb.retention.size and .percentage are ignored")
		}
	}
}

// splitKilnSection returns the file without its top-level kiln key, for
// Prometheus's strict parser, and the kiln section decoded strictly.
//
// The section is removed by blanking its lines rather than by re-marshalling
// the remaining YAML, so that the line numbers in Prometheus's errors still
// point into the user's file. Only a top-level mapping written in flow style
// ({global: ..., kiln: ...}), which has no lines to blank, is re-marshalled.
func splitKilnSection(data []byte) (string, FileConfig, bool, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return "", FileConfig{}, false, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		// Empty, or not a mapping: Prometheus reports what is wrong.
		return string(data), FileConfig{}, false, nil
	}
	root := doc.Content[0]
	idx := -1
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == kilnKey {
			idx = i
			break
		}
	}
	if idx < 0 {
		return string(data), FileConfig{}, false, nil
	}

	// Decode the whole file again so that errors carry the file's line
	// numbers; the inline map swallows the Prometheus keys.
	var whole struct {
		Kiln FileConfig     `yaml:"kiln"`
		Rest map[string]any `yaml:",inline"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&whole); err != nil && !errors.Is(err, io.EOF) {
		return "", FileConfig{}, false, fmt.Errorf("kiln section: %w", err)
	}
	if err := whole.Kiln.validate(); err != nil {
		return "", FileConfig{}, false, err
	}

	if root.Style&yaml.FlowStyle != 0 {
		rest := *root
		rest.Content = append(append([]*yaml.Node{}, root.Content[:idx]...), root.Content[idx+2:]...)
		out, err := yaml.Marshal(&rest)
		if err != nil {
			return "", FileConfig{}, false, fmt.Errorf("remove kiln section: %w", err)
		}
		return string(out), whole.Kiln, true, nil
	}

	lines := strings.SplitAfter(string(data), "\n")
	first := root.Content[idx].Line - 1 // 0-based, inclusive
	end := len(lines)                   // 0-based, exclusive
	if idx+2 < len(root.Content) {
		end = root.Content[idx+2].Line - 1
	}
	for i := first; i < end && i < len(lines); i++ {
		if strings.HasSuffix(lines[i], "\n") {
			lines[i] = "\n"
		} else {
			lines[i] = ""
		}
	}
	return strings.Join(lines, ""), whole.Kiln, true, nil
}

// DefaultPromConfig returns the configuration used without --config.file:
// a single job "kiln" scraping this process's own /metrics at selfAddr (the
// listen address) every 15s. An unspecified host such as 0.0.0.0 or an
// empty one is scraped as localhost. selfAddr must be a valid host:port, as
// ParseFlags ensures; anything else is a programming error and panics.
func DefaultPromConfig(selfAddr string) *promconfig.Config {
	return defaultPromConfig(selfAddr, "")
}

// defaultPromConfig scrapes selfAddr and, when instance is set and differs
// from the target, labels the samples with it: nodes of one cluster that
// all listen on 0.0.0.0:9364 (containers) must not write the same series.
func defaultPromConfig(selfAddr, instance string) *promconfig.Config {
	target := selfTarget(selfAddr)
	labels := ""
	if instance != "" && instance != target {
		labels = "\n        labels:\n          instance: " + strconv.Quote(instance)
	}
	text := fmt.Sprintf(`global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs:
  - job_name: kiln
    static_configs:
      - targets: [%s]%s
`, strconv.Quote(target), labels)
	// Going through Load, rather than filling in the struct, applies the
	// same defaults and validation as a file and marks the config loaded,
	// which GetScrapeConfigs insists on.
	cfg, err := promconfig.Load(text, promslog.NewNopLogger())
	if err != nil {
		panic(fmt.Sprintf("BUG: embedded config for %q does not load: %v", selfAddr, err))
	}
	return cfg
}

func selfTarget(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
