#!/usr/bin/env bash
# benches/full_load.sh - full load of `pgbench -i -s $SCALE` into an empty target, in one run on
# the same two clusters: the raw binary COPY pipe + index build (the physical limit),
# pg_dump -Fd -j N | pg_restore -j N, pgcopydb clone (when installed), a native
# publication/subscription initial sync, and pgcutover. Prints METRIC lines and a table.
#
#   cargo build --release && SCALE=50 REPS=1 benches/full_load.sh
#
# Reuses the shared harness (clusters, dataset, fingerprint, METRIC/RAW/NOTE output):
# BENCH_LIB points at its lib.sh (default: ../shared/bench/lib.sh beside this repository).
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_LIB="${BENCH_LIB:-$REPO/../shared/bench/lib.sh}"
[ -f "$BENCH_LIB" ] || { echo "no harness at $BENCH_LIB (set BENCH_LIB)" >&2; exit 1; }
RESULTS_DIR="${RESULTS_DIR:-$REPO/results}"
SCRIPT_NAME_OVERRIDE=full_load
. "$BENCH_LIB"
SCRIPT_NAME=full_load
JOBS="${JOBS:-$(nproc)}"
PGCUTOVER="${PGCUTOVER:-$REPO/target/release/pgcutover}"
[ -x "$PGCUTOVER" ] || die "build first: cargo build --release ($PGCUTOVER missing)"

bench_init
start_cluster src "$SRC_PORT"
start_cluster dst "$DST_PORT"
load_dataset
# pgbench_history has no key: like any user, give it a replica identity so CDC can carry it.
src -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL" >/dev/null
ROWS=$(count_rows src); SRC_FP=$(fingerprint src)
note "jobs=$JOBS pgcutover=$("$PGCUTOVER" --version)"
"$PGBIN/pg_dump" -h "$SOCK" -p "$SRC_PORT" --schema-only --section=pre-data  "$DBNAME" > "$BENCH_TMP/pre.sql"
"$PGBIN/pg_dump" -h "$SOCK" -p "$SRC_PORT" --schema-only --section=post-data "$DBNAME" > "$BENCH_TMP/post.sql"
TABLES=$(srcq "SELECT relname FROM pg_class WHERE relnamespace='public'::regnamespace AND relkind='r' ORDER BY pg_table_size(oid) DESC")

check_target() { [ "$(count_rows dst)" = "$ROWS" ] && [ "$(fingerprint dst)" = "$SRC_FP" ] || die "$1: target content mismatch"; }
fresh_target() { recreate_db "$DST_PORT"; src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null; }

pipe=(); dump=(); copydb=(); native=(); ours=(); rss=()
for rep in $(seq 1 "$REPS"); do
  # 1. raw pipe, one stream, then post-data
  fresh_target; dst -f "$BENCH_TMP/pre.sql" >/dev/null
  t0=$(now)
  for t in $TABLES; do
    src -c "COPY $t TO STDOUT (FORMAT binary)" | dst -c "COPY $t FROM STDIN (FORMAT binary)"
  done
  dst -f "$BENCH_TMP/post.sql" >/dev/null
  t1=$(now); check_target pipe; pipe+=("$(elapsed "$t0" "$t1")"); raw pipe_load_plus_index "$rep" "${pipe[-1]}" s

  # 2. pg_dump -Fd -j | pg_restore -j
  fresh_target; rm -rf "$BENCH_TMP/dump"
  t0=$(now)
  "$PGBIN/pg_dump" -h "$SOCK" -p "$SRC_PORT" -Fd -j "$JOBS" -Z 0 -f "$BENCH_TMP/dump" "$DBNAME"
  "$PGBIN/pg_restore" -h "$SOCK" -p "$DST_PORT" -j "$JOBS" -d "$DBNAME" "$BENCH_TMP/dump"
  t1=$(now); check_target pg_dump; dump+=("$(elapsed "$t0" "$t1")"); raw pgdump_total "$rep" "${dump[-1]}" s

  # 3. pgcopydb clone
  if command -v pgcopydb >/dev/null; then
    fresh_target; rm -rf "$BENCH_TMP/pgcopydb"
    t0=$(now)
    timeout "$TIMEOUT" pgcopydb clone --source "$SRC_URI" --target "$DST_URI" --table-jobs "$JOBS" \
      --index-jobs "$JOBS" --dir "$BENCH_TMP/pgcopydb" > "$BENCH_TMP/logs/pgcopydb-$rep.log" 2>&1 || die "pgcopydb failed"
    t1=$(now); check_target pgcopydb; copydb+=("$(elapsed "$t0" "$t1")"); raw pgcopydb_total "$rep" "${copydb[-1]}" s
  fi

  # 4. native publication/subscription (schema with indexes first, as users do)
  fresh_target; native_schema_to_target full; native_create_pub; sleep 6
  native_create_sub true; check_target native; native+=("$NATIVE_SYNC_S"); raw native_sync "$rep" "$NATIVE_SYNC_S" s
  native_drop_sub; src -c "DROP PUBLICATION IF EXISTS bench_pub" >/dev/null

  # 5. pgcutover: daemon from start to "loaded" (preflight, slot, schema, copy, indexes)
  fresh_target
  cfg="$BENCH_TMP/pgcutover.toml"
  cat > "$cfg" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:$SRC_PORT/$DBNAME?sslmode=disable"
[target]
url = "postgres://postgres@127.0.0.1:$DST_PORT/$DBNAME?sslmode=disable"
[replication]
migration_id = "bench"
tables = ["public.*"]
parallel_workers = $JOBS
[api]
listen = "127.0.0.1:0"
[state]
dir = "$BENCH_TMP/state"
TOML
  t0=$(now)
  "$PGCUTOVER" serve --config "$cfg" > "$BENCH_TMP/logs/pgcutover-$rep.log" 2>&1 &
  pid=$!
  loaded() {
    grep -q "migration stopped" "$BENCH_TMP/logs/pgcutover-$rep.log" && return 0
    [ "$(dstq "SELECT stage FROM pgcutover.migration" 2>/dev/null)" = loaded ]
  }
  wait_until "$TIMEOUT" 0.05 loaded || { tail -20 "$BENCH_TMP/logs/pgcutover-$rep.log" >&2; die "pgcutover did not finish"; }
  t1=$(now)
  grep -q "migration stopped" "$BENCH_TMP/logs/pgcutover-$rep.log" && { tail -5 "$BENCH_TMP/logs/pgcutover-$rep.log" >&2; die "pgcutover failed"; }
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  check_target pgcutover
  ours+=("$(elapsed "$t0" "$t1")"); rss+=("$(calc "$peak/1024" 1)")
  raw pgcutover_total "$rep" "${ours[-1]}" s; raw pgcutover_peak_rss "$rep" "${rss[-1]}" MB
  "$PGCUTOVER" cleanup --config "$cfg" >/dev/null
done

summarize pipe_load_plus_index s "${pipe[@]}"
summarize pgdump_total s "${dump[@]}"
[ "${#copydb[@]}" -gt 0 ] && summarize pgcopydb_total s "${copydb[@]}"
summarize native_sync s "${native[@]}"
summarize pgcutover_total s "${ours[@]}"
summarize pgcutover_peak_rss MB "${rss[@]}"
P=$(median "${pipe[@]}"); O=$(median "${ours[@]}")
metric pgcutover_vs_pipe "$(calc "$O/$P" 2)" x
{
  echo
  echo "| tool (SCALE=$SCALE, $ROWS rows, jobs=$JOBS, median of $REPS) | seconds |"
  echo "| --- | --- |"
  echo "| raw binary COPY pipe + index build | $P |"
  echo "| pg_dump -Fd -j$JOBS / pg_restore -j$JOBS | $(median "${dump[@]}") |"
  [ "${#copydb[@]}" -gt 0 ] && echo "| pgcopydb clone | $(median "${copydb[@]}") |"
  echo "| native publication/subscription | $(median "${native[@]}") |"
  echo "| **pgcutover** (peak RSS $(median "${rss[@]}") MB) | **$O** ($(calc "$O/$P" 2)x the pipe) |"
} | tee -a "$RESULT_FILE"
