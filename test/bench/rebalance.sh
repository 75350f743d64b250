#!/usr/bin/env bash
# Rebalance figures: a fourth node joins a loaded three-node cluster (RF=3).
# Reports the time until no partition moves, the bytes the new node fetched
# against the ideal (the partition-stream size of one full copy, measured by
# exporting every partition of node a just before the join, times the share
# of partitions the new node ends up owning), and the ingest throughput while
# partitions move as a ratio of before.
#
#   test/bench/rebalance.sh [SAMPLES] [SERIES]      (defaults 6000000 100000)
SAMPLES=${1:-6000000}
SERIES=${2:-100000}
source "$(dirname "$0")/lib.sh"
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

# One full copy as partition streams (what a fetch moves), from node a.
full=0
for p in $(seq 0 1023); do
	n=$(curl -s "http://127.0.0.1:19474/internal/v1/partition/export?p=$p&mint=-9223372036854775808&maxt=9223372036854775807" | wc -c)
	full=$((full + n))
done
echo "one full copy as partition streams: $((full / 1000000)) MB"

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
owned=$(curl -sf http://127.0.0.1:19504/api/v1/status/cluster | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print([m for m in d["members"] if m["name"] == "d"][0]["partitions_settled"])')
awk -v t0="$t0" -v t1="$t1" -v f="$fetched" -v full="$full" -v o="$owned" -v b="$before" -v d="$during" 'BEGIN {
	ideal = full * o / 1024
	printf "rebalance 3 -> 4 nodes: %.1f s until no partition moves\n", t1 - t0
	printf "new node owns %d partitions, fetched %.1f MB; ideal %.1f MB (one copy %.1f MB x %d/1024): %.2fx\n", o, f/1e6, ideal/1e6, full/1e6, o, f/ideal
	printf "ingest during the move: %.0f samples/s = %.2fx of before (%.0f)\n", d, d/b, b
}'
for n in a b c d; do echo "$n: $(du -sh "$TMP/$n/shard" | cut -f1) shard data"; done
