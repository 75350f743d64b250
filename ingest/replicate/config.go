package replicate

import (
	"errors"
	"fmt"
	"time"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Topology is what this package needs to know of the cluster.
type Topology interface {
	Self() string           // this node's name (a ring.Member.Name)
	Ring() *ring.Ring       // current assignment; nil before one is known
	Alive(name string) bool // gossip says the member is reachable now (Self is always alive)
}

// Write consistency levels.
const (
	ConsistencyOne    = "one"
	ConsistencyQuorum = "quorum"
	ConsistencyAll    = "all"
)

// Defaults, see Config.
const (
	DefaultTimeout             = 10 * time.Second
	DefaultMaxInflightPerPeer  = 8
	DefaultMaxHintBytesPerPeer = 1 << 30
	DefaultStragglerTimeout    = 500 * time.Millisecond
	DefaultHintsForgetAfter    = 10 * time.Minute
)

// Config configures a Writer. Zero fields take defaults.
type Config struct {
	// WriteConsistency is "one", "quorum" (default) or "all": the durable
	// copies each partition touched needs before Commit succeeds.
	WriteConsistency string `yaml:"write_consistency"`
	// Timeout bounds one forwarded request, waiting for its in-flight slot
	// included (default 10s).
	Timeout time.Duration `yaml:"timeout"`
	// StragglerTimeout is how long Commit still waits for the remaining
	// owners once every partition has its quorum (default 500ms); those
	// that have not answered by then get a hint. It bounds the pause a
	// peer cut off without gossip noticing yet causes.
	StragglerTimeout time.Duration `yaml:"straggler_timeout"`
	// MaxInflightPerPeer bounds concurrent requests to one peer (default 8):
	// a slow peer then costs bounded memory and fails over to hints.
	MaxInflightPerPeer int `yaml:"max_inflight_per_peer"`
	// HintsDir holds hinted-handoff batches; "" keeps them in memory (tests).
	HintsDir string `yaml:"hints_dir"`
	// MaxHintBytesPerPeer bounds the hints kept for one peer (default 1 GiB);
	// the oldest are dropped beyond it.
	MaxHintBytesPerPeer int64 `yaml:"max_hint_bytes_per_peer"`
	// HintsForgetAfter is how long a node with hints must have been out
	// of the ring before its hints are deleted (default 10m).
	HintsForgetAfter time.Duration `yaml:"hints_forget_after"`
	// Now is the clock (default time.Now).
	Now func() time.Time `yaml:"-"`

	// replayInterval is how often Run looks for hints to replay (tests
	// shorten it).
	replayInterval time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.WriteConsistency == "" {
		c.WriteConsistency = ConsistencyQuorum
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxInflightPerPeer == 0 {
		c.MaxInflightPerPeer = DefaultMaxInflightPerPeer
	}
	if c.StragglerTimeout == 0 {
		c.StragglerTimeout = DefaultStragglerTimeout
	}
	if c.MaxHintBytesPerPeer == 0 {
		c.MaxHintBytesPerPeer = DefaultMaxHintBytesPerPeer
	}
	if c.HintsForgetAfter == 0 {
		c.HintsForgetAfter = DefaultHintsForgetAfter
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.replayInterval == 0 {
		c.replayInterval = time.Second
	}
	var errs []error
	switch c.WriteConsistency {
	case ConsistencyOne, ConsistencyQuorum, ConsistencyAll:
	default:
		errs = append(errs, fmt.Errorf("write consistency must be one, quorum or all, got %q", c.WriteConsistency))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout must be positive, got %s", c.Timeout))
	}
	if c.MaxInflightPerPeer < 0 {
		errs = append(errs, fmt.Errorf("max in-flight requests per peer must be positive, got %d", c.MaxInflightPerPeer))
	}
	if c.MaxHintBytesPerPeer < 0 {
		errs = append(errs, fmt.Errorf("max hint bytes per peer must be positive, got %d", c.MaxHintBytesPerPeer))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("replicate config: %w", err)
	}
	return c, nil
}

// acksNeeded is W for replication factor rf.
func (c Config) acksNeeded(rf int) int {
	switch c.WriteConsistency {
	case ConsistencyOne:
		return 1
	case ConsistencyAll:
		return rf
	}
	return rf/2 + 1
}
