# Shared by the benchmark scripts: builds kiln and the ../shared/bench tools,
# starts nodes on 127.0.0.1 and stops them on exit. Source it after setting
# nothing; it defines TMP, PIDS, start_node and metric.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BENCH=../shared/bench
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
make -s build
(cd $BENCH/loadgen && go build -o "$TMP/loadgen" .)
(cd $BENCH/querybench && go build -o "$TMP/querybench" .)
printf 'global:\n  scrape_interval: 15s\n' > "$TMP/empty.yml"

# start_node NAME WEB GOSSIP [PEER]: starts a node and waits until ready.
start_node() {
	local extra=()
	[ -n "${4:-}" ] && extra+=("--cluster.peer=$4")
	./bin/kiln --storage.path="$TMP/$1" --config.file="$TMP/empty.yml" --log.level=warn \
		--web.listen-address="$2" --cluster.listen-address="$3" --cluster.node-name="$1" \
		--cluster.anti-entropy-interval=0 "${extra[@]}" 2>"$TMP/$1.log" &
	PIDS+=($!)
	for _ in $(seq 1 300); do curl -sf "http://$2/-/ready" >/dev/null && return; sleep 0.1; done
	echo "node $1 did not become ready"; cat "$TMP/$1.log"; exit 1
}

# metric ADDR NAME: the sum of a metric family's samples on a node.
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m || index($1, m"{") == 1 {s+=$2} END {print s+0}'; }

# wait_idle PIDS...: waits one flush interval (1 min) and then (up to 3 min)
# until the processes together use under a tenth of a core over two seconds,
# so that queries measured next do not compete with the flushes and
# compactions that follow a bulk load.
wait_idle() {
	local tick; tick=$(getconf CLK_TCK)
	sleep 65
	for _ in $(seq 1 90); do
		local before=0 after=0 p
		for p in "$@"; do before=$((before + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
		sleep 2
		for p in "$@"; do after=$((after + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
		[ $((after - before)) -lt $((tick / 5)) ] && return
	done
	echo "warning: nodes still busy after 3 minutes"
}
