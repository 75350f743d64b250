// Command kiln runs one Kiln node: a Prometheus-compatible time-series
// database. See README.md for the flags and endpoints.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kilnhq/kiln/node"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := node.ParseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		node.Usage(os.Stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kiln: %v\n", err)
		return 2
	}
	if cfg.PrintVersion {
		fmt.Printf("kiln version %s (revision %s, branch %s, built %s by %s)\n",
			node.Version, node.Revision, node.Branch, node.BuildDate, node.BuildUser)
		return 0
	}
	logger := cfg.Logger(os.Stderr)
	n, err := node.New(cfg, logger)
	if err != nil {
		logger.Error("start failed", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := n.Run(ctx); err != nil {
		logger.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}
