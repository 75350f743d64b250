// Package node wires one Kiln process together: it parses the command line,
// loads the configuration file and starts the storage, ingest, query and
// alerting components in dependency order.
//
// # Configuration
//
// Settings come from two places, as in Prometheus:
//
//   - Flags (ParseFlags) with Prometheus-style names such as
//     --storage.path and --web.listen-address. Both -flag and --flag work.
//   - An optional configuration file (--config.file) in the prometheus.yml
//     format, so that an existing Prometheus configuration loads unchanged.
//     Kiln's own settings live in a top-level `kiln:` section that
//     Prometheus's strict parser never sees (LoadConfigFile). Without a
//     file, Kiln uses an embedded configuration that scrapes its own
//     /metrics (DefaultPromConfig).
//
// When a setting can be given both ways, an explicitly given flag wins over
// the file, and the file wins over the flag's default. Only the service
// discoveries registered in config_sd.go are understood in scrape configs;
// see that file for why Consul is missing.
package node
