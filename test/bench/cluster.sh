#!/usr/bin/env bash
# End-to-end cluster cost against one node, with ../shared/bench's load
# generator and query tool: server CPU seconds per million samples (user+sys
# from /proc, summed over every node), internal-RPC bytes per replicated
# sample, the dashboard query set through one node of the cluster, and the
# single node's peak RSS.
#
#   test/bench/cluster.sh [SAMPLES] [SERIES]      (defaults 6000000 100000)
#
# QUERIES=0 skips the query sets (and the wait for idle nodes before them):
# the CPU and RPC figures alone take a few minutes.
#
# Runs only on 127.0.0.1; data goes to a temporary directory.
SAMPLES=${1:-6000000}
SERIES=${2:-100000}
source "$(dirname "$0")/lib.sh"

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)

run() { # label nodes-pids... ; loadgen to $URL
	local before=0 after=0 p
	for p in "$@"; do before=$((before + $(cpu "$p"))); done
	"$TMP/loadgen" -url "http://$URL/api/v1/write" -series "$SERIES" -samples "$SAMPLES" -batch 2000 -concurrency 4 -progress 0 > "$TMP/lg.json"
	for p in "$@"; do after=$((after + $(cpu "$p"))); done
	local acc; acc=$(grep -o '"samples_accepted":[0-9]*' "$TMP/lg.json" | cut -d: -f2)
	echo "$LABEL: $(cat "$TMP/lg.json")"
	awk -v c=$((after - before)) -v t="$tick" -v a="$acc" -v l="$LABEL" 'BEGIN { printf "%s: %.2f CPU-s per million samples (%.1f CPU-s for %d samples)\n", l, c/t/(a/1e6), c/t, a }'
}

# One node.
start_node single 127.0.0.1:19364 127.0.0.1:19365
URL=127.0.0.1:19364 LABEL="single node" run "${PIDS[0]}"
echo "single node peak RSS: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/${PIDS[0]}/status")"
last=$(( $(grep -o '"last_ts_ms":[0-9]*' "$TMP/lg.json" | cut -d: -f2) / 1000 ))
if [ "${QUERIES:-1}" != 0 ]; then
	wait_idle "${PIDS[@]}"
	"$TMP/querybench" -url http://127.0.0.1:19364 -n 5 -time "$last" > "$TMP/q-single.json"
	echo "single node queries: $(cat "$TMP/q-single.json" | tail -1)"
fi
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()

# Three nodes, RF=3 (the default), load through node a.
start_node a 127.0.0.1:19374 127.0.0.1:19375
start_node b 127.0.0.1:19384 127.0.0.1:19385 127.0.0.1:19375
start_node c 127.0.0.1:19394 127.0.0.1:19395 127.0.0.1:19375
# Every node in the ring and no partition moving: joins move (empty)
# partitions to the new owners, which must not be measured as ingest.
for _ in $(seq 1 600); do
	st=$(curl -sf http://127.0.0.1:19374/api/v1/status/cluster || true)
	n=$(grep -o '"in_ring":true' <<<"$st" | wc -l)
	[ "$n" = 3 ] && grep -q '"moving_partitions":0[,}]' <<<"$st" && break; sleep 0.2
done
URL=127.0.0.1:19374 LABEL="3 nodes RF=3" run "${PIDS[@]}"
fwd=$(curl -s http://127.0.0.1:19374/metrics | awk '/^kiln_cluster_forward_bytes_total/ {s+=$2} END {print s+0}')
acc=$(grep -o '"samples_accepted":[0-9]*' "$TMP/lg.json" | cut -d: -f2)
awk -v b="$fwd" -v a="$acc" 'BEGIN { printf "internal RPC: %.0f bytes forwarded, %.2f bytes per replicated sample (2 peer copies per sample)\n", b, b/(2*a) }'
last=$(( $(grep -o '"last_ts_ms":[0-9]*' "$TMP/lg.json" | cut -d: -f2) / 1000 ))
[ "${QUERIES:-1}" = 0 ] && exit 0
wait_idle "${PIDS[@]}"
"$TMP/querybench" -url http://127.0.0.1:19384 -n 5 -time "$last" > "$TMP/q-cluster.json"
echo "cluster queries through node b: $(tail -1 "$TMP/q-cluster.json")"
