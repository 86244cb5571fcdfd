#!/usr/bin/env bash
# benches/validate.sh - full validation next to plain exact counting, in one run on the same
# two clusters (dataset: pgbench -i -s $SCALE, loaded into the target by pgcutover):
#   1. count:    SELECT count(*) of every table, on the source then on the target;
#   2. count ‖:  the same, both sides at once;
#   3. md5 ‖:    the usual hand-written checksum, sum of md5(row::text) per table, both sides at
#                once (what the digest replaces);
#   4. pgcutover validate --quick and --full (every check, checksums of every row).
# REPS repetitions each; prints METRIC lines and a table of medians.
#
#   cargo build --release && SCALE=50 REPS=3 benches/validate.sh
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_LIB="${BENCH_LIB:-$REPO/../shared/bench/lib.sh}"
[ -f "$BENCH_LIB" ] || { echo "no harness at $BENCH_LIB (set BENCH_LIB)" >&2; exit 1; }
RESULTS_DIR="${RESULTS_DIR:-$REPO/results}"
. "$BENCH_LIB"
SCRIPT_NAME=validate
PGCUTOVER="${PGCUTOVER:-$REPO/target/release/pgcutover}"
[ -x "$PGCUTOVER" ] || die "build first: cargo build --release ($PGCUTOVER missing)"

bench_init
start_cluster src "$SRC_PORT"
start_cluster dst "$DST_PORT"
load_dataset
recreate_db "$DST_PORT"
# pgbench_history has no key: like any user, give it a replica identity so it can be migrated.
src -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL" >/dev/null
note "pgcutover=$("$PGCUTOVER" --version)"

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
"$PGCUTOVER" --log-format json serve --config "$cfg" >> "$BENCH_TMP/logs/pgcutover.log" 2>&1 &
DAEMON_PID=$!; BG_PIDS+=("$DAEMON_PID")
loaded() {
  kill -0 "$DAEMON_PID" 2>/dev/null || { tail -5 "$BENCH_TMP/logs/pgcutover.log" >&2; die "pgcutover exited"; }
  ! grep -q '"migration stopped"' "$BENCH_TMP/logs/pgcutover.log" || { tail -3 "$BENCH_TMP/logs/pgcutover.log" >&2; die "pgcutover failed"; }
  local s; s=$(dstq "SELECT stage FROM pgcutover.migration" 2>/dev/null)
  [ "$s" = loaded ] || [ "$s" = cdc ]
}
wait_until "$TIMEOUT" 0.5 loaded \
  || { tail -20 "$BENCH_TMP/logs/pgcutover.log" >&2; die "pgcutover did not load"; }
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true
[ "$(fingerprint dst)" = "$(fingerprint src)" ] || die "target differs from source after the load"
src -c "VACUUM ANALYZE" >/dev/null; dst -c "VACUUM ANALYZE" >/dev/null
src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null

TABLES=$(srcq "SELECT string_agg(format('%I.%I', schemaname, relname), ' ') FROM pg_stat_user_tables WHERE schemaname = 'public'")
count_side() { local t; for t in $TABLES; do "$1"q "SELECT count(*) FROM $t" >/dev/null; done; }
md5_side() {
  local t
  for t in $TABLES; do
    "$1"q "SELECT count(*), sum(('x' || substr(md5(r::text), 1, 16))::bit(64)::bigint) FROM $t AS r" >/dev/null
  done
}
run_validate() {
  "$PGCUTOVER" validate "$@" --config "$cfg" > "$BENCH_TMP/logs/validate.out" 2>&1
  local rc=$?
  [ "$rc" = 0 ] || { cat "$BENCH_TMP/logs/validate.out" >&2; die "validate $* exited $rc"; }
}

declare -a C_SEQ C_PAR MD5 QUICK FULL
for rep in $(seq 1 "$REPS"); do
  # warm both caches once so that every variant reads from memory alike
  [ "$rep" = 1 ] && { count_side src; count_side dst; }
  t0=$(now); count_side src; count_side dst; t1=$(now)
  C_SEQ+=("$(elapsed "$t0" "$t1")"); raw count_sequential "$rep" "${C_SEQ[-1]}" s
  t0=$(now); count_side src & p=$!; count_side dst; wait "$p"; t1=$(now)
  C_PAR+=("$(elapsed "$t0" "$t1")"); raw count_parallel "$rep" "${C_PAR[-1]}" s
  t0=$(now); md5_side src & p=$!; md5_side dst; wait "$p"; t1=$(now)
  MD5+=("$(elapsed "$t0" "$t1")"); raw md5_parallel "$rep" "${MD5[-1]}" s
  t0=$(now); run_validate --quick; t1=$(now)
  QUICK+=("$(elapsed "$t0" "$t1")"); raw validate_quick "$rep" "${QUICK[-1]}" s
  t0=$(now); run_validate --full; t1=$(now)
  FULL+=("$(elapsed "$t0" "$t1")"); raw validate_full "$rep" "${FULL[-1]}" s
done
grep -q PASSED "$BENCH_TMP/logs/validate.out" || die "the full validation did not pass"

m_seq=$(median "${C_SEQ[@]}"); m_par=$(median "${C_PAR[@]}"); m_md5=$(median "${MD5[@]}")
m_quick=$(median "${QUICK[@]}"); m_full=$(median "${FULL[@]}")
metric count_sequential_s "$m_seq" s; metric count_parallel_s "$m_par" s; metric md5_parallel_s "$m_md5" s
metric validate_quick_s "$m_quick" s; metric validate_full_s "$m_full" s
metric full_over_count "$(calc "$m_full/$m_seq" 2)" x
metric full_over_count_parallel "$(calc "$m_full/$m_par" 2)" x
range() { echo "[$(minof "$@")–$(maxof "$@")]"; }
{
  echo
  echo "| what (scale $SCALE, median of $REPS) | seconds |"
  echo "| --- | --- |"
  echo "| \`SELECT count(*)\` of every table, source then target | $m_seq $(range "${C_SEQ[@]}") |"
  echo "| \`SELECT count(*)\` of every table, both sides at once | $m_par $(range "${C_PAR[@]}") |"
  echo "| sum of \`md5(row::text)\` per table, both sides at once | $m_md5 $(range "${MD5[@]}") |"
  echo "| \`pgcutover validate --quick\` | $m_quick $(range "${QUICK[@]}") |"
  echo "| **\`pgcutover validate --full\`** | **$m_full** $(range "${FULL[@]}") |"
  echo
  echo "full validation / sequential count: $(calc "$m_full/$m_seq" 2)x; / parallel count: $(calc "$m_full/$m_par" 2)x"
} | tee -a "$RESULT_FILE"
