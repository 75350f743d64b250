package node

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/units"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	promconfig "github.com/prometheus/prometheus/config"
)

// Defaults of the command-line flags.
const (
	DefaultStoragePath         = "./data"
	DefaultRetention           = 15 * 24 * time.Hour
	DefaultQueryTimeout        = 2 * time.Minute
	DefaultQueryMaxSamples     = 50_000_000
	DefaultQueryMaxConcurrency = 20
	DefaultLookbackDelta       = 5 * time.Minute
	DefaultLogLevel            = "info"
	DefaultLogFormat           = "logfmt"
	DefaultMaxRequestBytes     = 64 << 20

	// DefaultListenAddress uses 9364 rather than Prometheus's 9090 so that
	// Kiln and a Prometheus server can run side by side on one host, for
	// example while a Prometheus setup is being migrated.
	DefaultListenAddress = "0.0.0.0:9364"

	// DefaultClusterListenAddress is the gossip port (TCP and UDP), next to
	// the API's. Raft listens on this port + 1000 unless told otherwise.
	DefaultClusterListenAddress = "0.0.0.0:9365"
	DefaultClusterName          = "kiln"
	DefaultBootstrapExpect      = 1
	DefaultReplicationFactor    = 3
	DefaultWriteConsistency     = "quorum"
	DefaultDeadNodeTimeout      = 5 * time.Minute
	DefaultMoveRate             = 64 << 20
	DefaultMaxConcurrentMoves   = 2
	DefaultAntiEntropyInterval  = time.Hour
	DefaultLeaveTimeout         = 5 * time.Minute
)

// Flag names, shared by the flag set, the precedence rules and Flags.
const (
	flagStoragePath         = "storage.path"
	flagRetention           = "storage.retention.time"
	flagSyncInterval        = "storage.sync-interval"
	flagListenAddress       = "web.listen-address"
	flagMaxRequestBytes     = "web.max-request-bytes"
	flagConfigFile          = "config.file"
	flagQueryTimeout        = "query.timeout"
	flagQueryMaxSamples     = "query.max-samples"
	flagQueryMaxConcurrency = "query.max-concurrency"
	flagLookbackDelta       = "query.lookback-delta"
	flagQueryParallelism    = "query.parallelism"
	flagLogLevel            = "log.level"
	flagLogFormat           = "log.format"
	flagVersion             = "version"

	flagClusterNodeName         = "cluster.node-name"
	flagClusterName             = "cluster.name"
	flagClusterListenAddress    = "cluster.listen-address"
	flagClusterAdvertiseAddress = "cluster.advertise-address"
	flagClusterPeer             = "cluster.peer"
	flagClusterZone             = "cluster.zone"
	flagClusterRaftAddress      = "cluster.raft-address"
	flagClusterAPIAddress       = "cluster.api-advertise-address"
	flagBootstrapExpect         = "cluster.bootstrap-expect"
	flagReplicationFactor       = "cluster.replication-factor"
	flagWriteConsistency        = "cluster.write-consistency"
	flagPartialResponse         = "query.partial-response"
	flagDeadNodeTimeout         = "cluster.dead-node-timeout"
	flagMoveRate                = "cluster.move-rate"
	flagMaxConcurrentMoves      = "cluster.max-concurrent-moves"
	flagAntiEntropyInterval     = "cluster.anti-entropy-interval"
	flagLeaveOnShutdown         = "cluster.leave-on-shutdown"
	flagLeaveTimeout            = "cluster.leave-timeout"
)

var (
	logLevels         = []string{"debug", "info", "warn", "error"}
	logFormats        = []string{"logfmt", "json"}
	writeConsistences = []string{"one", "quorum", "all"}
)

// ClusterConfig holds the cluster flags. A node started without peers is a
// cluster of one: the same code path, with a ring of one member.
type ClusterConfig struct {
	// NodeName is this node's stable name; empty means the name kept in the
	// storage directory, or a new one made from the host name.
	NodeName         string
	Name             string
	ListenAddress    string
	AdvertiseAddress string
	Peers            []string
	Zone             string
	// RaftAddress is empty for the derived default: the gossip host with
	// the gossip port + 1000.
	RaftAddress string
	// APIAdvertiseAddress is the HTTP address peers use; empty derives it
	// from --web.listen-address and the gossip advertise host.
	APIAdvertiseAddress string
	BootstrapExpect     int
	ReplicationFactor   int
	WriteConsistency    string
	// DeadNodeTimeout: a member unreachable this long is removed and its
	// partitions re-replicated.
	DeadNodeTimeout     time.Duration
	MoveRate            int64 // bytes per second one partition stream may use
	MaxConcurrentMoves  int
	AntiEntropyInterval time.Duration // 0 disables anti-entropy
	// LeaveOnShutdown hands this node's partitions over on SIGTERM before
	// exiting, bounded by LeaveTimeout. Off by default, as Consul servers'
	// leave_on_terminate: when every node of a cluster is stopped at once
	// (make cluster, compose down) each would leave and the membership
	// would be gone at the next start.
	LeaveOnShutdown bool
	LeaveTimeout    time.Duration
}

// Config is the complete configuration of one Kiln process: the flags, and
// the configuration file they point to.
type Config struct {
	StoragePath         string
	Retention           time.Duration
	SyncInterval        time.Duration
	ListenAddress       string
	ConfigFile          string
	QueryTimeout        time.Duration
	QueryMaxSamples     int
	QueryMaxConcurrency int
	// QueryParallelism is how many concurrent slices an aggregation is
	// evaluated in (query/parallel); 0 means GOMAXPROCS, 1 none.
	QueryParallelism int
	LookbackDelta    time.Duration
	LogLevel         string
	LogFormat        string
	// MaxRequestBytes bounds the body of a request, such as a remote-write
	// batch, before it is decompressed.
	MaxRequestBytes int64
	// PartialResponse is the default of the partial_response query
	// parameter: answer with what live nodes hold, plus a warning.
	PartialResponse bool

	Cluster ClusterConfig

	// PrintVersion is set by --version. ParseFlags then returns at once,
	// without validating the other flags or reading the configuration file.
	PrintVersion bool

	// Prom is the prometheus.yml part of the configuration: loaded from
	// ConfigFile, or the embedded default when ConfigFile is empty.
	Prom *promconfig.Config
	// Kiln is the `kiln:` section of the configuration file.
	Kiln FileConfig
	// ConfigYAML is what /api/v1/status/config shows: the loaded
	// configuration re-marshalled, so that secrets appear as <secret>.
	ConfigYAML string
	// Embedded is true when no --config.file was given.
	Embedded bool

	// explicit holds the names of the flags given on the command line; they
	// win over the configuration file. It is only read once ParseFlags
	// returns, so copies of Config may share it.
	explicit map[string]bool
}

// DefaultConfig returns the configuration of a Kiln started without flags:
// every flag at its default and the embedded scrape configuration. Tests
// that run a node in-process start from it.
func DefaultConfig() Config {
	c := defaultFlags()
	c.useEmbedded()
	return c
}

func defaultFlags() Config {
	return Config{
		StoragePath:         DefaultStoragePath,
		Retention:           DefaultRetention,
		ListenAddress:       DefaultListenAddress,
		QueryTimeout:        DefaultQueryTimeout,
		QueryMaxSamples:     DefaultQueryMaxSamples,
		QueryMaxConcurrency: DefaultQueryMaxConcurrency,
		LookbackDelta:       DefaultLookbackDelta,
		LogLevel:            DefaultLogLevel,
		LogFormat:           DefaultLogFormat,
		MaxRequestBytes:     DefaultMaxRequestBytes,
		Cluster: ClusterConfig{
			Name:                DefaultClusterName,
			ListenAddress:       DefaultClusterListenAddress,
			BootstrapExpect:     DefaultBootstrapExpect,
			ReplicationFactor:   DefaultReplicationFactor,
			WriteConsistency:    DefaultWriteConsistency,
			DeadNodeTimeout:     DefaultDeadNodeTimeout,
			MoveRate:            DefaultMoveRate,
			MaxConcurrentMoves:  DefaultMaxConcurrentMoves,
			AntiEntropyInterval: DefaultAntiEntropyInterval,
			LeaveOnShutdown:     false,
			LeaveTimeout:        DefaultLeaveTimeout,
		},
	}
}

// ParseFlags parses the command line (without the program name, i.e.
// os.Args[1:]) and loads the configuration file it names, or the embedded
// default. Errors name the offending flag or file. For -h/--help it returns
// an error that matches flag.ErrHelp; the caller prints Usage.
func ParseFlags(args []string) (Config, error) {
	c := defaultFlags()
	fs := c.flagSet()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, err
		}
		return Config{}, doubleDash(err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q: all settings are --name=value flags", fs.Arg(0))
	}
	c.explicit = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.explicit[f.Name] = true })
	if c.PrintVersion {
		return c, nil
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	if c.ConfigFile == "" {
		c.useEmbedded()
		return c, nil
	}
	prom, kiln, text, err := LoadConfigFile(c.ConfigFile, c.Logger(os.Stderr))
	if err != nil {
		return Config{}, fmt.Errorf("--%s: %w", flagConfigFile, err)
	}
	c.useFile(prom, kiln, text)
	return c, nil
}

// Reload re-reads ConfigFile and returns c with Prom, Kiln, ConfigYAML and
// the settings the file can override updated. c itself is left alone, so a
// failed reload keeps the running configuration. With the embedded
// configuration there is nothing to re-read and c is returned unchanged.
func (c Config) Reload(logger *slog.Logger) (Config, error) {
	if c.Embedded || c.ConfigFile == "" {
		return c, nil
	}
	prom, kiln, text, err := LoadConfigFile(c.ConfigFile, logger)
	if err != nil {
		return c, err
	}
	c.useFile(prom, kiln, text)
	return c, nil
}

func (c *Config) useEmbedded() {
	c.Prom = DefaultPromConfig(c.ListenAddress)
	c.Kiln = FileConfig{}
	c.ConfigYAML = c.Prom.String()
	c.Embedded = true
}

// useFile installs a loaded file and applies the precedence rule: a flag
// given on the command line wins, then the file, then the flag's default.
// Settings not given explicitly are still at their defaults here (ParseFlags)
// or are reset to them (Reload), so that removing a setting from the file
// and reloading restores the default.
func (c *Config) useFile(prom *promconfig.Config, kiln FileConfig, text string) {
	c.Prom, c.Kiln, c.ConfigYAML, c.Embedded = prom, kiln, text, false

	if !c.explicit[flagRetention] {
		c.Retention = DefaultRetention
		// storage.tsdb.retention.time is Prometheus's own place for this
		// setting (the flag is deprecated there), so honour it rather than
		// invent a Kiln one.
		if r := prom.StorageConfig.TSDBConfig; r != nil && r.Retention != nil && r.Retention.Time > 0 {
			c.Retention = time.Duration(r.Retention.Time)
		}
	}
	q := kiln.Query
	if !c.explicit[flagQueryTimeout] {
		c.QueryTimeout = orDefault(time.Duration(q.Timeout), DefaultQueryTimeout)
	}
	if !c.explicit[flagQueryMaxSamples] {
		c.QueryMaxSamples = orDefault(q.MaxSamples, DefaultQueryMaxSamples)
	}
	if !c.explicit[flagLookbackDelta] {
		c.LookbackDelta = orDefault(time.Duration(q.LookbackDelta), DefaultLookbackDelta)
	}
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Validate checks the flag values. ParseFlags calls it; callers that build a
// Config by hand (tests) may too.
func (c Config) Validate() error {
	var errs []error
	bad := func(name string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if c.StoragePath == "" {
		bad(flagStoragePath, "must not be empty")
	}
	if c.SyncInterval < 0 {
		bad(flagSyncInterval, "must not be negative, got %s", c.SyncInterval)
	}
	if c.Retention <= 0 {
		bad(flagRetention, "must be positive, got %s", c.Retention)
	}
	if err := checkListenAddress(c.ListenAddress); err != nil {
		bad(flagListenAddress, "%v", err)
	}
	if c.QueryTimeout <= 0 {
		bad(flagQueryTimeout, "must be positive, got %s", c.QueryTimeout)
	}
	if c.QueryMaxSamples <= 0 {
		bad(flagQueryMaxSamples, "must be positive, got %d", c.QueryMaxSamples)
	}
	if c.QueryMaxConcurrency <= 0 {
		bad(flagQueryMaxConcurrency, "must be positive, got %d", c.QueryMaxConcurrency)
	}
	if c.QueryParallelism < 0 {
		bad(flagQueryParallelism, "must not be negative, got %d", c.QueryParallelism)
	}
	if c.LookbackDelta <= 0 {
		bad(flagLookbackDelta, "must be positive, got %s", c.LookbackDelta)
	}
	if c.MaxRequestBytes <= 0 {
		bad(flagMaxRequestBytes, "must be positive, got %d", c.MaxRequestBytes)
	}
	if !slices.Contains(logLevels, c.LogLevel) {
		bad(flagLogLevel, "%q is not one of %s", c.LogLevel, strings.Join(logLevels, "|"))
	}
	if !slices.Contains(logFormats, c.LogFormat) {
		bad(flagLogFormat, "%q is not one of %s", c.LogFormat, strings.Join(logFormats, "|"))
	}
	cl := c.Cluster
	if cl.Name == "" {
		bad(flagClusterName, "must not be empty")
	}
	if err := checkListenAddress(cl.ListenAddress); err != nil {
		bad(flagClusterListenAddress, "%v", err)
	}
	for name, addr := range map[string]string{
		flagClusterAdvertiseAddress: cl.AdvertiseAddress,
		flagClusterRaftAddress:      cl.RaftAddress,
		flagClusterAPIAddress:       cl.APIAdvertiseAddress,
	} {
		if addr != "" {
			if err := checkListenAddress(addr); err != nil {
				bad(name, "%v", err)
			}
		}
	}
	for _, p := range cl.Peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			bad(flagClusterPeer, "%q is not host:port: %v", p, err)
		}
	}
	if cl.BootstrapExpect < 1 {
		bad(flagBootstrapExpect, "must be at least 1, got %d", cl.BootstrapExpect)
	}
	if cl.ReplicationFactor < 1 {
		bad(flagReplicationFactor, "must be at least 1, got %d", cl.ReplicationFactor)
	}
	if cl.DeadNodeTimeout <= 0 {
		bad(flagDeadNodeTimeout, "must be positive, got %s", cl.DeadNodeTimeout)
	}
	if cl.MoveRate < 0 {
		bad(flagMoveRate, "must not be negative")
	}
	if cl.MaxConcurrentMoves < 1 {
		bad(flagMaxConcurrentMoves, "must be at least 1, got %d", cl.MaxConcurrentMoves)
	}
	if cl.AntiEntropyInterval < 0 {
		bad(flagAntiEntropyInterval, "must not be negative")
	}
	if cl.LeaveTimeout <= 0 {
		bad(flagLeaveTimeout, "must be positive, got %s", cl.LeaveTimeout)
	}
	if !slices.Contains(writeConsistences, cl.WriteConsistency) {
		bad(flagWriteConsistency, "%q is not one of %s", cl.WriteConsistency, strings.Join(writeConsistences, "|"))
	}
	return errors.Join(errs...)
}

func checkListenAddress(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("invalid port %q in %q", port, addr)
	}
	return nil
}

// Flags returns every flag's name and value, formatted as the flag would
// parse it (15d, 64MiB), for /api/v1/status/flags. Values are the effective
// ones, after the configuration file was applied.
func (c Config) Flags() map[string]string {
	cp := c
	fs := cp.flagSet()
	out := make(map[string]string)
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == flagVersion {
			return // an action, not a setting
		}
		out[f.Name] = f.Value.String()
	})
	return out
}

// Usage writes the flag reference, Prometheus style (--name=default).
func Usage(w io.Writer) {
	c := defaultFlags()
	fs := c.flagSet()
	var b strings.Builder
	b.WriteString("Usage: kiln [flags]\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			fmt.Fprintf(&b, "  --%s\n", f.Name)
		} else {
			fmt.Fprintf(&b, "  --%s=%s\n", f.Name, f.DefValue)
		}
		fmt.Fprintf(&b, "      %s\n", f.Usage)
	})
	// Nothing useful can be done if printing the help text fails.
	_, _ = io.WriteString(w, b.String())
}

// Logger returns the logger that --log.level and --log.format ask for,
// writing to w.
func (c Config) Logger(w io.Writer) *slog.Logger {
	lvl := promslog.NewLevel()
	if err := lvl.Set(c.LogLevel); err != nil {
		_ = lvl.Set(DefaultLogLevel) // Validate reports the bad value; log meanwhile.
	}
	format := promslog.NewFormat()
	if err := format.Set(c.LogFormat); err != nil {
		_ = format.Set(DefaultLogFormat)
	}
	return promslog.New(&promslog.Config{Level: lvl, Format: format, Writer: w})
}

// flagSet binds a private flag set to c's fields. The current values become
// the defaults, so the same definitions serve ParseFlags (c at defaults),
// Flags (c at its effective values) and Usage.
func (c *Config) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("kiln", flag.ContinueOnError)
	// Errors are returned, not printed: the caller decides where they go.
	fs.SetOutput(io.Discard)

	fs.StringVar(&c.StoragePath, flagStoragePath, c.StoragePath,
		"Directory holding the shards' data.")
	fs.Var(durationValue{&c.Retention}, flagRetention,
		"How long to keep samples (Prometheus durations: 15d, 2w, 12h). storage.tsdb.retention.time in the config file applies when this flag is not given.")
	fs.Var(durationValue{&c.SyncInterval}, flagSyncInterval,
		"0 fsyncs every write before acknowledging it. A positive interval acknowledges writes once the OS holds them (a killed kiln loses nothing) and fsyncs every interval, so a power cut loses at most that much, as with Prometheus's WAL.")
	fs.StringVar(&c.ListenAddress, flagListenAddress, c.ListenAddress,
		"Address to listen on for the API, remote write and /metrics.")
	fs.Var(bytesValue{&c.MaxRequestBytes}, flagMaxRequestBytes,
		"Largest accepted request body, e.g. a remote-write batch (64MiB, 1GiB or plain bytes).")
	fs.StringVar(&c.ConfigFile, flagConfigFile, c.ConfigFile,
		"Configuration file in the prometheus.yml format with an optional kiln: section. Without it Kiln scrapes only itself.")
	fs.Var(durationValue{&c.QueryTimeout}, flagQueryTimeout,
		"Maximum time a query may take before it is aborted.")
	fs.IntVar(&c.QueryMaxSamples, flagQueryMaxSamples, c.QueryMaxSamples,
		"Maximum number of samples a single query may load into memory.")
	fs.IntVar(&c.QueryMaxConcurrency, flagQueryMaxConcurrency, c.QueryMaxConcurrency,
		"Maximum number of queries executed concurrently.")
	fs.IntVar(&c.QueryParallelism, flagQueryParallelism, c.QueryParallelism,
		"Number of concurrent slices of the series in which one query evaluates a sum, avg, min, max, count or group of a per-series expression; 0 is the number of CPUs, 1 evaluates every query on one core.")
	fs.Var(durationValue{&c.LookbackDelta}, flagLookbackDelta,
		"How far back PromQL looks for a sample when evaluating an instant.")
	fs.Var(enumValue{&c.LogLevel, logLevels}, flagLogLevel,
		"Only log messages at or above this level: "+strings.Join(logLevels, "|")+".")
	fs.Var(enumValue{&c.LogFormat, logFormats}, flagLogFormat,
		"Log format: "+strings.Join(logFormats, "|")+".")
	fs.BoolVar(&c.PartialResponse, flagPartialResponse, c.PartialResponse,
		"Default of the partial_response query parameter: when some partition has no live replica, answer with the data that is there and a warning instead of an error.")
	cl := &c.Cluster
	fs.StringVar(&cl.NodeName, flagClusterNodeName, cl.NodeName,
		"This node's unique, stable name. Default: the name kept in --storage.path, or <hostname>-<random> on first start.")
	fs.StringVar(&cl.Name, flagClusterName, cl.Name,
		"Name of the cluster; gossip from nodes of another cluster is refused.")
	fs.StringVar(&cl.ListenAddress, flagClusterListenAddress, cl.ListenAddress,
		"Gossip address (TCP and UDP).")
	fs.StringVar(&cl.AdvertiseAddress, flagClusterAdvertiseAddress, cl.AdvertiseAddress,
		"Gossip address peers use to reach this node. Default: detected from --cluster.listen-address.")
	fs.Var(stringsValue{&cl.Peers}, flagClusterPeer,
		"Gossip address (host:port) of a member to join; repeatable. Any one live member is enough. None: a new cluster of one.")
	fs.StringVar(&cl.Zone, flagClusterZone, cl.Zone,
		"Failure domain of this node; replicas of a partition go to distinct zones when zones are set.")
	fs.StringVar(&cl.RaftAddress, flagClusterRaftAddress, cl.RaftAddress,
		"Raft address. Default: the gossip host, gossip port + 1000.")
	fs.StringVar(&cl.APIAdvertiseAddress, flagClusterAPIAddress, cl.APIAdvertiseAddress,
		"HTTP address peers use for internal RPC. Default: --web.listen-address, with the gossip advertise host when it listens on all interfaces.")
	fs.IntVar(&cl.BootstrapExpect, flagBootstrapExpect, cl.BootstrapExpect,
		"Number of members to wait for before a new cluster bootstraps Raft.")
	fs.IntVar(&cl.ReplicationFactor, flagReplicationFactor, cl.ReplicationFactor,
		"Copies of each partition (capped by the number of nodes). Set when the cluster is created.")
	fs.Var(enumValue{&cl.WriteConsistency, writeConsistences}, flagWriteConsistency,
		"Owners that must durably accept a write before it is acknowledged: one|quorum (floor(RF/2)+1)|all.")
	fs.Var(durationValue{&cl.DeadNodeTimeout}, flagDeadNodeTimeout,
		"A member unreachable this long is removed from the cluster and its partitions are re-replicated from the surviving copies.")
	fs.Var(bytesValue{&cl.MoveRate}, flagMoveRate,
		"Bytes per second one partition stream may use when partitions move or are repaired (0 = unlimited).")
	fs.IntVar(&cl.MaxConcurrentMoves, flagMaxConcurrentMoves, cl.MaxConcurrentMoves,
		"Partitions this node fetches at once when it is assigned new ones.")
	fs.Var(durationValue{&cl.AntiEntropyInterval}, flagAntiEntropyInterval,
		"Pause between two anti-entropy passes, which compare replicas by digests and repair differences (0 = off).")
	fs.BoolVar(&cl.LeaveOnShutdown, flagLeaveOnShutdown, cl.LeaveOnShutdown,
		"On SIGTERM, hand this node's partitions to others and leave the cluster before exiting (decommissioning), so every partition keeps its copies. Off by default: a restart in place, or stopping every node at once, must not dissolve the membership; a stopped node is served by its replicas and removed only after --cluster.dead-node-timeout. POST /api/v1/admin/cluster/leave leaves explicitly.")
	fs.Var(durationValue{&cl.LeaveTimeout}, flagLeaveTimeout,
		"How long a leaving node waits for its partitions to be handed over before it exits anyway.")
	fs.BoolVar(&c.PrintVersion, flagVersion, c.PrintVersion,
		"Print version information and exit.")
	return fs
}

// doubleDash rewrites the flag package's "-name" in errors to the "--name"
// spelling Kiln documents; both are accepted on the command line.
func doubleDash(err error) error {
	msg := err.Error()
	for _, from := range []string{"for flag -", "not defined: -", "argument: -", "for -"} {
		if i := strings.Index(msg, from); i >= 0 && !strings.HasPrefix(msg[i+len(from):], "-") {
			return errors.New(msg[:i+len(from)] + "-" + msg[i+len(from):])
		}
	}
	return err
}

// durationValue is a flag.Value in Prometheus's duration syntax, which adds
// d, w and y to Go's units.
type durationValue struct{ p *time.Duration }

func (v durationValue) String() string {
	if v.p == nil { // flag.isZeroValue calls String on a zero Value.
		return ""
	}
	return model.Duration(*v.p).String()
}

func (v durationValue) Set(s string) error {
	d, err := model.ParseDuration(s)
	if err != nil {
		return err
	}
	*v.p = time.Duration(d)
	return nil
}

// bytesValue is a flag.Value for sizes: 64MiB, 512KB (both base 2) or a
// plain number of bytes.
type bytesValue struct{ p *int64 }

func (v bytesValue) String() string {
	if v.p == nil {
		return ""
	}
	return units.Base2Bytes(*v.p).String()
}

func (v bytesValue) Set(s string) error {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		*v.p = n
		return nil
	}
	n, err := units.ParseBase2Bytes(s)
	if err != nil {
		return fmt.Errorf("not a size like 64MiB: %w", err)
	}
	*v.p = int64(n)
	return nil
}

// stringsValue is a repeatable string flag; a comma also separates values.
type stringsValue struct{ p *[]string }

func (v stringsValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v stringsValue) Set(s string) error {
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			*v.p = append(*v.p, e)
		}
	}
	return nil
}

// enumValue is a string flag.Value restricted to a fixed set of values.
type enumValue struct {
	p       *string
	allowed []string
}

func (v enumValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v enumValue) Set(s string) error {
	if !slices.Contains(v.allowed, s) {
		return fmt.Errorf("must be one of %s", strings.Join(v.allowed, "|"))
	}
	*v.p = s
	return nil
}
