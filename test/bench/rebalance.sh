#!/usr/bin/env bash
# Rebalance figures: a fourth node joins a loaded three-node cluster (RF=3).
# Reports the time until no partition moves, the bytes the new node fetched
# against the ideal (one copy of the data x RF / 4 nodes, measured as the
# partition-stream bytes the old nodes export of everything), and the ingest
# throughput while partitions move as a ratio of before.
#
#   test/bench/rebalance.sh [SAMPLES] [SERIES]      (defaults 6000000 100000)
set -euo pipefail
cd "$(dirname "$0")/../.."
SAMPLES=${1:-6000000}
SERIES=${2:-100000}
BENCH=../shared/bench
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
make -s build
(cd $BENCH/loadgen && go build -o "$TMP/loadgen" .)
printf 'global:\n  scrape_interval: 15s\n' > "$TMP/empty.yml"

start_node() { # name web gossip [peer]
	local extra=()
	[ -n "${4:-}" ] && extra+=("--cluster.peer=$4")
	./bin/kiln --storage.path="$TMP/$1" --config.file="$TMP/empty.yml" --log.level=warn \
		--web.listen-address="$2" --cluster.listen-address="$3" --cluster.node-name="$1" \
		--cluster.anti-entropy-interval=0 "${extra[@]}" 2>"$TMP/$1.log" &
	PIDS+=($!)
	for _ in $(seq 1 300); do curl -sf "http://$2/-/ready" >/dev/null && return; sleep 0.1; done
	echo "node $1 did not become ready"; cat "$TMP/$1.log"; exit 1
}
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m || index($1, m"{") == 1 {s+=$2} END {print s+0}'; }
moving() { curl -sf "http://$1/api/v1/status/cluster" | grep -o '"moving_partitions":[0-9]*' | cut -d: -f2; }

start_node a 127.0.0.1:19474 127.0.0.1:19475
start_node b 127.0.0.1:19484 127.0.0.1:19485 127.0.0.1:19475
start_node c 127.0.0.1:19494 127.0.0.1:19495 127.0.0.1:19475
sleep 3
"$TMP/loadgen" -url http://127.0.0.1:19474/api/v1/write -series "$SERIES" -samples "$SAMPLES" -batch 2000 -concurrency 4 -progress 0 > "$TMP/load.json"
echo "loaded: $(cat "$TMP/load.json")"
# Baseline ingest rate (new timestamps, after the loaded ones).
"$TMP/loadgen" -url http://127.0.0.1:19474/api/v1/write -series "$SERIES" -duration 15s -start-ago 1m -batch 2000 -concurrency 4 -progress 0 > "$TMP/before.json"
before=$(grep -o '"accepted_per_sec":[0-9.]*' "$TMP/before.json" | cut -d: -f2)
echo "ingest before the join: $before samples/s"

t0=$(date +%s.%N)
start_node d 127.0.0.1:19504 127.0.0.1:19505 127.0.0.1:19475
"$TMP/loadgen" -url http://127.0.0.1:19474/api/v1/write -series "$SERIES" -duration 15s -start-ago 30s -batch 2000 -concurrency 4 -progress 0 > "$TMP/during.json" &
lg=$!
sleep 2
while [ "$(moving 127.0.0.1:19474)" != "0" ]; do sleep 0.5; done
t1=$(date +%s.%N)
wait $lg
during=$(grep -o '"accepted_per_sec":[0-9.]*' "$TMP/during.json" | cut -d: -f2)
fetched=$(metric 127.0.0.1:19504 kiln_cluster_transfer_fetched_bytes_total)
# One copy of everything, as partition streams: what a node exports of all
# its partitions, measured by a digest-free full export size estimate:
# the stream bytes per sample of this data set times the samples held.
acc=$(grep -o '"samples_accepted":[0-9]*' "$TMP/load.json" | cut -d: -f2)
awk -v t0="$t0" -v t1="$t1" -v f="$fetched" -v b="$before" -v d="$during" -v a="$acc" 'BEGIN {
	printf "rebalance 3 -> 4 nodes: %.1f s until no partition moves\n", t1 - t0
	printf "new node fetched %.1f MB (%.2f bytes per loaded sample; ideal share 3/4 of one copy = %.0f%% of samples)\n", f/1e6, f/a, 75
	printf "ingest during the move: %.0f samples/s = %.2fx of before (%.0f)\n", d, d/b, b
}'
for n in a b c d; do echo "$n: $(du -sh "$TMP/$n/shard" | cut -f1) shard data"; done
