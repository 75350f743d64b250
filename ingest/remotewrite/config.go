package remotewrite

import (
	"errors"
	"fmt"
	"runtime"
)

// Config bounds the resources the handler may use. Zero fields take defaults.
type Config struct {
	// MaxDecodedBytes is the largest decompressed request accepted (default
	// 64 MiB). Larger requests are answered 400 from the snappy header alone,
	// before anything is allocated; retrying them cannot succeed.
	MaxDecodedBytes int64
	// MaxInflightRequests bounds requests being decoded or appended at once
	// (default 4×GOMAXPROCS, at least 8). Decoding is CPU-bound, but Commit
	// can wait on disk, so a few requests per core keep the CPUs busy; more
	// would only add memory and latency. Excess requests get 503.
	MaxInflightRequests int
	// MaxInflightBytes bounds the memory held by in-flight requests
	// (default 256 MiB): decompressed bodies, reserved on admission, plus
	// their decoded form, charged as decoding proceeds (typically 2–10× the
	// body; capped at 32×). It must be at least MaxDecodedBytes, or a maximal
	// request could never be admitted. Requests that do not fit get 503; a
	// request alone in flight is never refused for its own size.
	MaxInflightBytes int64
}

// Defaults, see Config.
const (
	DefaultMaxDecodedBytes  = 64 << 20
	DefaultMaxInflightBytes = 256 << 20
	minInflightRequests     = 8
)

// withDefaults fills zero fields and validates the result.
func (c Config) withDefaults() (Config, error) {
	if c.MaxDecodedBytes == 0 {
		c.MaxDecodedBytes = DefaultMaxDecodedBytes
	}
	if c.MaxInflightRequests == 0 {
		c.MaxInflightRequests = max(minInflightRequests, 4*runtime.GOMAXPROCS(0))
	}
	if c.MaxInflightBytes == 0 {
		c.MaxInflightBytes = max(DefaultMaxInflightBytes, c.MaxDecodedBytes)
	}
	var errs []error
	if c.MaxDecodedBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxDecodedBytes must be positive, got %d", c.MaxDecodedBytes))
	}
	if c.MaxInflightRequests < 0 {
		errs = append(errs, fmt.Errorf("MaxInflightRequests must be positive, got %d", c.MaxInflightRequests))
	}
	if c.MaxInflightBytes < c.MaxDecodedBytes {
		errs = append(errs, fmt.Errorf("MaxInflightBytes (%d) must be at least MaxDecodedBytes (%d)", c.MaxInflightBytes, c.MaxDecodedBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("remotewrite config: %w", err)
	}
	return c, nil
}
