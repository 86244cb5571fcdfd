#!/usr/bin/env bash
# benches/cdc.sh - change data capture, pgcutover next to a native PostgreSQL subscription, in
# one run on the same two clusters (dataset: pgbench -i -s $SCALE):
#   1. source TPS of `pgbench -c4 -j2 -T$PGBENCH_T` with no replication at all;
#   2. native subscription: source TPS and slot lag while pgbench runs; then the catch-up rate
#      of a backlog made while the subscription was disabled (pgbench: N_TX transactions of 4
#      row changes; bulk: BULK_ROWS rows updated in 100-row transactions);
#   3. pgcutover (full load, then CDC): source TPS, slot lag and the daemon's own end-to-end
#      heartbeat lag (sampled from /status every 0.25 s) while pgbench runs; then the same two
#      backlogs, made while the daemon was stopped, timed from its restart to the marker row;
#      the daemon's peak RSS.
# Prints METRIC lines and a table.
#
#   cargo build --release && SCALE=50 REPS=1 benches/cdc.sh
#
# Reuses the shared harness (clusters, dataset, markers, workloads, lag sampler).
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_LIB="${BENCH_LIB:-$REPO/../shared/bench/lib.sh}"
[ -f "$BENCH_LIB" ] || { echo "no harness at $BENCH_LIB (set BENCH_LIB)" >&2; exit 1; }
RESULTS_DIR="${RESULTS_DIR:-$REPO/results}"
. "$BENCH_LIB"
SCRIPT_NAME=cdc
PGBENCH_T="${PGBENCH_T:-60}"; CLIENTS="${CLIENTS:-4}"; THREADS="${THREADS:-2}"
N_TX="${N_TX:-60000}"; BULK_ROWS="${BULK_ROWS:-1000000}"; BATCH="${BATCH:-100}"
PGCUTOVER="${PGCUTOVER:-$REPO/target/release/pgcutover}"
[ -x "$PGCUTOVER" ] || die "build first: cargo build --release ($PGCUTOVER missing)"

bench_init
start_cluster src "$SRC_PORT"
start_cluster dst "$DST_PORT"
load_dataset
# pgbench_history has no key: like any user, give it a replica identity so CDC can carry it.
src -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL" >/dev/null
note "pgbench -n -c$CLIENTS -j$THREADS -T$PGBENCH_T; backlogs: pgbench $N_TX txns, bulk $BULK_ROWS rows in $BATCH-row txns; pgcutover=$("$PGCUTOVER" --version)"

backlog() {   # backlog pgbench|bulk : make the backlog on the source
  if [ "$1" = pgbench ]; then workload_pgbench "$N_TX"; else workload_bulk "$BULK_ROWS" "$BATCH"; fi
}
changes_of() { if [ "$1" = pgbench ]; then echo $((N_TX / CLIENTS * CLIENTS * 4)); else echo "$BULK_ROWS"; fi; }
same_or_die() { [ "$(fingerprint dst)" = "$(fingerprint src)" ] || die "$1: target differs from source"; }

# ---- 1. no replication
src -c CHECKPOINT >/dev/null
run_pgbench "$SRC_PORT" "$BENCH_TMP/logs/pgb-base.txt" -c "$CLIENTS" -j "$THREADS" -T "$PGBENCH_T"
TPS_BASE=$(pgbench_tps "$BENCH_TMP/logs/pgb-base.txt"); metric tps_no_replication "$TPS_BASE" tps

# ---- 2. native subscription
native_create_pub
recreate_db "$DST_PORT"
native_schema_to_target full
native_create_sub true
src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null; sleep 2
csv="$BENCH_TMP/logs/lag-native.csv"
start_lag_sampler "$csv" $((PGBENCH_T + 600)) bench_sub
ts=$(now)
run_pgbench "$SRC_PORT" "$BENCH_TMP/logs/pgb-native.txt" -c "$CLIENTS" -j "$THREADS" -T "$PGBENCH_T"
te=$(now)
id=$(put_marker); wait_marker "$id"; stop_lag_sampler
same_or_die native
TPS_NATIVE=$(pgbench_tps "$BENCH_TMP/logs/pgb-native.txt"); metric tps_native "$TPS_NATIVE" tps
read -r NATIVE_LAG_MED NATIVE_LAG_P95 NATIVE_LAG_MAX <<<"$(lag_stats "$csv" "$ts" "$te" 4)"
metric native_slot_lag_median "$NATIVE_LAG_MED" bytes; metric native_slot_lag_max "$NATIVE_LAG_MAX" bytes
slot_inactive() { [ "$(srcq "SELECT active FROM pg_replication_slots WHERE slot_name='bench_sub'")" = f ]; }
declare -A NATIVE_RATE OURS_RATE
for w in pgbench bulk; do
  dst -c "ALTER SUBSCRIPTION bench_sub DISABLE" >/dev/null
  tdis=$(now)
  wait_until 60 0.1 slot_inactive || die "walsender did not stop"
  src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null
  backlog "$w"
  id=$(put_marker)
  # the PG15 launcher starts workers at most every wal_retrieve_retry_interval (5 s)
  while [ "$(elapsed "$tdis" "$(now)" | cut -d. -f1)" -lt 6 ]; do sleep 0.2; done
  t0=$(now)
  dst -c "ALTER SUBSCRIPTION bench_sub ENABLE" >/dev/null
  wait_marker "$id"
  t1=$(now)
  same_or_die "native $w"
  NATIVE_RATE[$w]=$(calc "$(changes_of "$w")/$(elapsed "$t0" "$t1")" 0)
  metric "native_catchup_${w}_s" "$(elapsed "$t0" "$t1")" s
  metric "native_catchup_${w}_rows_per_s" "${NATIVE_RATE[$w]}" rows/s
done
native_drop_sub
src -c "DROP PUBLICATION IF EXISTS bench_pub" >/dev/null

# ---- 3. pgcutover
recreate_db "$DST_PORT"
cfg="$BENCH_TMP/pgcutover.toml"
cat > "$cfg" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:$SRC_PORT/$DBNAME?sslmode=disable"
[target]
url = "postgres://postgres@127.0.0.1:$DST_PORT/$DBNAME?sslmode=disable"
[replication]
migration_id = "bench"
tables = ["public.*"]
[api]
listen = "127.0.0.1:0"
[state]
dir = "$BENCH_TMP/state"
TOML
DAEMON_PID=""
PEAK_KB=0
start_daemon() {
  "$PGCUTOVER" --log-format json serve --config "$cfg" >> "$BENCH_TMP/logs/pgcutover.log" 2>&1 &
  DAEMON_PID=$!
  BG_PIDS+=("$DAEMON_PID")
}
stop_daemon() {
  local kb
  kb=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status" 2>/dev/null || echo 0)
  [ "${kb:-0}" -gt "$PEAK_KB" ] && PEAK_KB=$kb
  kill -TERM "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null || true
}
api_addr() { grep -o '"listen":"[^"]*"' "$BENCH_TMP/logs/pgcutover.log" | tail -1 | cut -d'"' -f4; }
streaming() { [ "$(dstq "SELECT stage FROM pgcutover.migration" 2>/dev/null)" = cdc ]; }
start_daemon
wait_until "$TIMEOUT" 0.2 bash -c "[ \"\$($PGBIN/psql -X -At -h '$SOCK' -p $DST_PORT -d $DBNAME -c 'SELECT stage FROM pgcutover.migration' 2>/dev/null)\" = loaded ]" \
  || { tail -20 "$BENCH_TMP/logs/pgcutover.log" >&2; die "pgcutover did not load"; }
id=$(put_marker); wait_marker "$id"
same_or_die "pgcutover load"
ADDR=$(api_addr)
src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null; sleep 2
csv="$BENCH_TMP/logs/lag-ours.csv"; hb="$BENCH_TMP/logs/heartbeat-lag.txt"
start_lag_sampler "$csv" $((PGBENCH_T + 600)) pgcutover_bench
( end=$(( $(date +%s) + PGBENCH_T + 5 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    curl -s "http://$ADDR/status" | grep -o '"lag_seconds":[0-9.e-]*' | cut -d: -f2 >> "$hb"
    sleep 0.25
  done ) &
HB_PID=$!; BG_PIDS+=("$HB_PID")
ts=$(now)
run_pgbench "$SRC_PORT" "$BENCH_TMP/logs/pgb-ours.txt" -c "$CLIENTS" -j "$THREADS" -T "$PGBENCH_T"
te=$(now)
kill "$HB_PID" 2>/dev/null; wait "$HB_PID" 2>/dev/null || true
id=$(put_marker); wait_marker "$id"; stop_lag_sampler
same_or_die pgcutover
TPS_OURS=$(pgbench_tps "$BENCH_TMP/logs/pgb-ours.txt"); metric tps_pgcutover "$TPS_OURS" tps
read -r OURS_LAG_MED OURS_LAG_P95 OURS_LAG_MAX <<<"$(lag_stats "$csv" "$ts" "$te" 4)"
metric pgcutover_slot_lag_median "$OURS_LAG_MED" bytes; metric pgcutover_slot_lag_max "$OURS_LAG_MAX" bytes
read -r HB_P50 HB_P99 HB_MAX <<<"$(sort -g "$hb" | awk '{v[NR]=$1} END{ if(NR==0){print "NA NA NA"; exit} i=int(0.5*NR+0.5); if(i<1)i=1; j=int(0.99*NR+0.999); if(j>NR)j=NR; print v[i], v[j], v[NR] }')"
metric pgcutover_lag_p50 "$HB_P50" s; metric pgcutover_lag_p99 "$HB_P99" s; metric pgcutover_lag_max "$HB_MAX" s
metric pgcutover_lag_samples "$(wc -l < "$hb")" samples
for w in pgbench bulk; do
  stop_daemon
  src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null
  backlog "$w"
  id=$(put_marker)
  t0=$(now)
  start_daemon
  wait_marker "$id"
  t1=$(now)
  same_or_die "pgcutover $w"
  OURS_RATE[$w]=$(calc "$(changes_of "$w")/$(elapsed "$t0" "$t1")" 0)
  metric "pgcutover_catchup_${w}_s" "$(elapsed "$t0" "$t1")" s
  metric "pgcutover_catchup_${w}_rows_per_s" "${OURS_RATE[$w]}" rows/s
done
stop_daemon
metric pgcutover_peak_rss "$(calc "$PEAK_KB/1024" 1)" MB
"$PGCUTOVER" cleanup --config "$cfg" >/dev/null

pct() { calc "100*($1-$TPS_BASE)/$TPS_BASE" 1; }
{
  echo
  echo "| SCALE=$SCALE, pgbench -c$CLIENTS -j$THREADS -T$PGBENCH_T | native subscription | **pgcutover** |"
  echo "| --- | --- | --- |"
  echo "| source TPS (no replication: $TPS_BASE) | $TPS_NATIVE ($(pct "$TPS_NATIVE") %) | $TPS_OURS ($(pct "$TPS_OURS") %) |"
  echo "| slot lag under pgbench, median / max (bytes) | $NATIVE_LAG_MED / $NATIVE_LAG_MAX | $OURS_LAG_MED / $OURS_LAG_MAX |"
  echo "| end-to-end lag under pgbench, p50 / p99 / max (s) | – | $HB_P50 / $HB_P99 / $HB_MAX |"
  echo "| catch-up, pgbench backlog ($(changes_of pgbench) changes) | ${NATIVE_RATE[pgbench]} rows/s | ${OURS_RATE[pgbench]} rows/s ($(calc "${OURS_RATE[pgbench]}/${NATIVE_RATE[pgbench]}" 2)x) |"
  echo "| catch-up, bulk backlog ($BULK_ROWS rows, $BATCH-row txns) | ${NATIVE_RATE[bulk]} rows/s | ${OURS_RATE[bulk]} rows/s ($(calc "${OURS_RATE[bulk]}/${NATIVE_RATE[bulk]}" 2)x) |"
  echo "| daemon peak RSS | – | $(calc "$PEAK_KB/1024" 1) MB |"
} | tee -a "$RESULT_FILE"
