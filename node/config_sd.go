package node

// Service discoveries register their *_sd_configs keys with Prometheus's
// config parser when imported, so this list decides which scrape configs
// load. It lives here, next to the config loading, and not in ingest/scrape,
// because a file naming an unregistered discovery must fail at load time
// whether or not anything scrapes yet.
//
// Prometheus imports all of them (discovery/install). Kiln cannot: Consul's
// client depends on github.com/hashicorp/go-metrics/compat, which go-metrics
// v0.7.0 removed, and memberlist v0.7.0 and raft v1.8.0 (cluster/) require
// that version. The rest are a choice: the most used discoveries plus those
// whose dependencies Kiln already has. Adding one is one import line and a
// `go get`; each cloud SDK adds to build time and binary size.
import (
	_ "github.com/prometheus/prometheus/discovery/aws"        // aws, ec2, ecs, elasticache, lightsail, msk, rds
	_ "github.com/prometheus/prometheus/discovery/azure"      // azure
	_ "github.com/prometheus/prometheus/discovery/dns"        // dns
	_ "github.com/prometheus/prometheus/discovery/eureka"     // eureka
	_ "github.com/prometheus/prometheus/discovery/file"       // file
	_ "github.com/prometheus/prometheus/discovery/gce"        // gce
	_ "github.com/prometheus/prometheus/discovery/http"       // http
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // kubernetes
	_ "github.com/prometheus/prometheus/discovery/marathon"   // marathon
	_ "github.com/prometheus/prometheus/discovery/moby"       // docker, dockerswarm
	_ "github.com/prometheus/prometheus/discovery/puppetdb"   // puppetdb
	_ "github.com/prometheus/prometheus/discovery/triton"     // triton
)
