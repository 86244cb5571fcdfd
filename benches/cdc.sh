#!/usr/bin/env bash
# benches/cdc.sh - change data capture, pgcutover next to a native PostgreSQL subscription, in
# one run on the same two clusters (dataset: pgbench -i -s $SCALE). Both consumers follow the
# same source at once, into two databases of the target cluster (native: $DBNAME, pgcutover:
# pgc), and are switched on and off so that only the one being measured runs:
#   1. live, REPS rounds in rotating order: source TPS of `pgbench -c4 -j2 -T$PGBENCH_T` with
#      no consumer running, with the native subscription, with pgcutover; the CPU the
#      replication takes per 1000 source transactions (the source's walsender, the whole target
#      cluster, and pgcutover's daemon), read from /proc; slot lag (1 s samples) and, for
#      pgcutover, its end-to-end heartbeat lag (/status every 0.25 s). Before each round every
#      consumer catches up, untimed.
#   2. catch-up, REPS rounds, first consumer alternating: with both stopped the source makes
#      a backlog (pgbench: N_TX transactions of 4 row changes; bulk: BULK_ROWS rows updated in
#      BATCH-row transactions), then each consumer alone applies that same backlog, timed from
#      its start until a marker row written last is on its target; with the CPU of each of
#      its processes, the rest of the machine (idle, stolen, other processes, and which of
#      those took most), the context switches of the walsender and the daemon, the TCP
#      segments the walsender's stream went out in, the WAL the target wrote, the pages added
#      to the table and to its key's index, and the share of HOT updates on the target.
#   3. pgcutover's peak RSS over every daemon it started.
# Every catch-up ends with the harness's content fingerprint check (target equals source).
# Medians over the rounds go in METRIC lines and a table; each round's figures in RAW lines.
# On a shared 2-core machine single runs differ by 20-30 %: compare within a run.
#
#   cargo build --release && SCALE=50 REPS=3 benches/cdc.sh
#
# LIVE=0 / CATCHUP=0 leave out one half; WORKLOADS="bulk" (default "pgbench bulk") picks the
# backlogs; BULK_STATE=fresh|vacuumed|asis sets the state of the target table the bulk backlog
# meets (see bulk_state below); APPLY_SESSIONS sets pgcutover's replication.apply_sessions
# (default 2); QUIET=1 starts each catch-up with no autovacuum running (see quiet below);
# HOG=PCT runs a neighbour that takes PCT % of one core during every catch-up (see hog_on);
# WAITS=1 samples what the consumer's server processes wait for (see waits_on); SETTLE=0
# leaves the vacuum after a backlog and after each catch-up to autovacuum (see settle).
# TARGET_WAL_COMPRESSION=METHOD sets wal_compression for the whole target cluster (both
# consumers; pgcutover's default, "auto", keeps a setting that is not off); PGC_WAL_COMPRESSION
# sets pgcutover's replication.target_wal_compression (e.g. "server": its sessions leave the
# target's setting alone, as the native worker does).
#
# Reuses the shared harness (clusters, dataset, markers, workloads, lag sampler).
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_LIB="${BENCH_LIB:-$REPO/../shared/bench/lib.sh}"
[ -f "$BENCH_LIB" ] || { echo "no harness at $BENCH_LIB (set BENCH_LIB)" >&2; exit 1; }
RESULTS_DIR="${RESULTS_DIR:-$REPO/results}"
# Two target databases of 755 MB each (at SCALE=50) share the target's buffers: with the
# harness's 1 GB they would evict each other's pages and each catch-up would pay for the other.
SHARED_BUFFERS="${SHARED_BUFFERS:-2GB}"
. "$BENCH_LIB"
SCRIPT_NAME=cdc
PGBENCH_T="${PGBENCH_T:-60}"; CLIENTS="${CLIENTS:-4}"; THREADS="${THREADS:-2}"
N_TX="${N_TX:-60000}"; BULK_ROWS="${BULK_ROWS:-1000000}"; BATCH="${BATCH:-100}"
WORKLOADS="${WORKLOADS:-pgbench bulk}"; BULK_STATE="${BULK_STATE:-asis}"
PGCUTOVER="${PGCUTOVER:-$REPO/target/release/pgcutover}"
OURDB=pgc
[ -x "$PGCUTOVER" ] || die "build first: cargo build --release ($PGCUTOVER missing)"

bench_init
start_cluster src "$SRC_PORT"
start_cluster dst "$DST_PORT"
if [ -n "${TARGET_WAL_COMPRESSION:-}" ]; then
  psql_port "$DST_PORT" -d postgres -At -c "ALTER SYSTEM SET wal_compression = '$TARGET_WAL_COMPRESSION'" >/dev/null
  psql_port "$DST_PORT" -d postgres -At -c "SELECT pg_reload_conf()" >/dev/null
fi
load_dataset
# pgbench_history has no key: like any user, give it a replica identity so CDC can carry it.
src -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL" >/dev/null
note "pgbench -n -c$CLIENTS -j$THREADS -T$PGBENCH_T, $REPS rounds; backlogs: pgbench $N_TX txns, bulk $BULK_ROWS rows in $BATCH-row txns; pgcutover=$("$PGCUTOVER" --version); target wal_compression=$(psql_port "$DST_PORT" -d postgres -At -c "SHOW wal_compression"), pgcutover's target_wal_compression=${PGC_WAL_COMPRESSION:-default}"

ourq() { psql_port "$DST_PORT" -d "$OURDB" -At -c "$1"; }
# the harness's marker wait and fingerprint, on a chosen target database
wait_marker_in() {   # wait_marker_in DB ID
  psql_port "$DST_PORT" -d "$1" -At -c "DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
      LOOP
        PERFORM 1 FROM bench_marker WHERE id = $2;
        EXIT WHEN FOUND;
        IF clock_timestamp() - t0 > interval '$TIMEOUT seconds' THEN RAISE EXCEPTION 'marker % not seen', $2; END IF;
        PERFORM pg_sleep(0.02);
      END LOOP; END \$\$" >/dev/null
}
fingerprint_sql="SELECT (SELECT count(*)||':'||coalesce(sum(abalance),0) FROM pgbench_accounts)||'/'||(SELECT coalesce(sum(bbalance),0) FROM pgbench_branches)||'/'||(SELECT coalesce(sum(tbalance),0) FROM pgbench_tellers)||'/'||(SELECT count(*) FROM pgbench_history)"
same_or_die() {   # same_or_die DB WHAT
  [ "$(psql_port "$DST_PORT" -d "$1" -At -c "$fingerprint_sql")" = "$(srcq "$fingerprint_sql")" ] \
    || die "$2: target differs from source"
}

# ---- consumers
slot_inactive() { [ "$(srcq "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name='$1'")" = f ]; }
NATIVE_OFF_AT=0
NATIVE_ON=1   # native_create_sub leaves it enabled
native_on() {
  [ "$NATIVE_ON" = 1 ] && return 0
  # the PG15 launcher starts a worker at most every wal_retrieve_retry_interval (5 s)
  while [ "$(elapsed "$NATIVE_OFF_AT" "$(now)" | cut -d. -f1)" -lt 6 ]; do sleep 0.2; done
  dst -c "ALTER SUBSCRIPTION bench_sub ENABLE" >/dev/null
  NATIVE_ON=1
}
native_off() {
  [ "$NATIVE_ON" = 0 ] && return 0
  dst -c "ALTER SUBSCRIPTION bench_sub DISABLE" >/dev/null
  NATIVE_OFF_AT=$(now); NATIVE_ON=0
  wait_until 60 0.1 slot_inactive bench_sub || die "the native walsender did not stop"
}
cfg="$BENCH_TMP/pgcutover.toml"
cat > "$cfg" <<TOML
[source]
url = "postgres://postgres@127.0.0.1:$SRC_PORT/$DBNAME?sslmode=disable"
[target]
url = "postgres://postgres@127.0.0.1:$DST_PORT/$OURDB?sslmode=disable"
[replication]
migration_id = "bench"
tables = ["public.*"]
apply_sessions = ${APPLY_SESSIONS:-2}
${PGC_WAL_COMPRESSION:+target_wal_compression = \"$PGC_WAL_COMPRESSION\"}
[api]
listen = "127.0.0.1:0"
[state]
dir = "$BENCH_TMP/state"
TOML
DAEMON_PID=""
PEAK_KB=0
ours_on() {
  [ -n "$DAEMON_PID" ] && return 0
  "$PGCUTOVER" --log-format json serve --config "$cfg" >> "$BENCH_TMP/logs/pgcutover.log" 2>&1 &
  DAEMON_PID=$!
  BG_PIDS+=("$DAEMON_PID")
}
ours_off() {
  local kb
  [ -z "$DAEMON_PID" ] && return 0
  kb=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status" 2>/dev/null || echo 0)
  [ "${kb:-0}" -gt "$PEAK_KB" ] && PEAK_KB=$kb
  kill -TERM "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
  wait_until 60 0.1 slot_inactive pgcutover_bench || die "pgcutover's walsender did not stop"
}
api_addr() { grep -o '"listen":"[^"]*"' "$BENCH_TMP/logs/pgcutover.log" | tail -1 | cut -d'"' -f4; }
# every consumer on and caught up to a fresh marker, then the named ones (or none) left on.
# Before they stop, both slots' restart_lsn is moved past everything applied: it moves only
# at a decoded running_xacts record (a checkpoint writes one) that the consumer confirmed,
# and a consumer restarted with restart_lsn still before the previous backlog makes its
# walsender decode that whole backlog again before the new one (about a second for 1M rows,
# for either consumer), which is not the catch-up being measured.
slots_restart_past() {   # slots_restart_past LSN
  [ "$(srcq "SELECT bool_and(restart_lsn >= '$1') FROM pg_replication_slots WHERE slot_name IN ('bench_sub', 'pgcutover_bench')")" = t ]
}
only() {
  local id lsn
  native_on; ours_on
  id=$(put_marker); wait_marker_in "$DBNAME" "$id"; wait_marker_in "$OURDB" "$id"
  lsn=$(srcq "SELECT pg_current_wal_lsn()"); src -c CHECKPOINT >/dev/null
  wait_until 60 0.2 slots_restart_past "$lsn" || note "a slot's restart_lsn stayed before $lsn"
  [[ " $* " == *" native "* ]] || native_off
  [[ " $* " == *" pgcutover "* ]] || ours_off
}

# ---- CPU of the replication processes, from /proc (clock ticks): the source's walsenders,
# every process of the target cluster (the native apply worker or pgcutover's session, and the
# WAL writer, checkpointer and background writer they keep busy: the target serves nothing
# else), and the daemon itself.
repl_pids() {
  local p c pp src_pm dst_pm
  src_pm=$(head -1 "$BENCH_TMP/src/postmaster.pid"); dst_pm=$(head -1 "$BENCH_TMP/dst/postmaster.pid")
  for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    pp=$(awk '{print $4}' "$p/stat" 2>/dev/null) || continue
    if [ "$pp" = "$dst_pm" ] || { [ "$pp" = "$src_pm" ] && [[ "$c" == *walsender* ]]; } \
      || [[ "$c" == "$PGCUTOVER "* ]]; then
      echo "${p#/proc/}"
    fi
  done
}
cpu_ticks() {   # cpu_ticks PID... -> "pid ticks" lines
  local p
  for p in "$@"; do awk -v p="$p" '{print p, $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done
}
# ticks used between two snapshots by the processes of the first (pids that ended count
# what the first saw of them as 0: a consumer is never restarted inside a measurement)
ticks_between() { awk 'NR==FNR {a[$1]=$2; next} ($1 in a) {s += $2 - a[$1]} END {print s+0}' "$1" "$2"; }

# ---- setup: native subscription into $DBNAME, pgcutover into $OURDB, both loaded
# Both connect to the source over TCP on 127.0.0.1, as a migration between two hosts does (the
# harness's default for the subscription is the Unix socket, which pgcutover's replication
# transport does not offer; TCP costs the walsender more per message than a Unix socket).
SRC_CONNINFO() { echo "host=127.0.0.1 port=$SRC_PORT dbname=$DBNAME user=postgres"; }
native_create_pub
recreate_db "$DST_PORT"
native_schema_to_target full
native_create_sub true
psql_port "$DST_PORT" -d postgres -c "CREATE DATABASE $OURDB" >/dev/null
ours_on
wait_until "$TIMEOUT" 0.2 bash -c "[ \"\$($PGBIN/psql -X -At -h '$SOCK' -p $DST_PORT -d $OURDB -c 'SELECT stage FROM pgcutover.migration' 2>/dev/null)\" = loaded ]" \
  || { tail -20 "$BENCH_TMP/logs/pgcutover.log" >&2; die "pgcutover did not load"; }
id=$(put_marker); wait_marker_in "$DBNAME" "$id"; wait_marker_in "$OURDB" "$id"
same_or_die "$DBNAME" "native load"; same_or_die "$OURDB" "pgcutover load"
src -c "VACUUM ANALYZE" >/dev/null; dst -c "VACUUM ANALYZE" >/dev/null; ourq "VACUUM ANALYZE" >/dev/null

# ---- 1. live
TPS_LIST_none=(); TPS_LIST_native=(); TPS_LIST_pgcutover=(); CPU_LIST_native=(); CPU_LIST_pgcutover=()
declare -A AV_LIVE
HB="$BENCH_TMP/logs/heartbeat-lag.txt"; : > "$HB"
SLOTLAG_native="$BENCH_TMP/logs/slotlag-native.txt"; SLOTLAG_pgcutover="$BENCH_TMP/logs/slotlag-pgcutover.txt"
: > "$SLOTLAG_native"; : > "$SLOTLAG_pgcutover"
# Autovacuum workers running on either cluster now.
autovacuums() {
  echo $(( $(srcq "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'") \
    + $(dstq "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'") ))
}
live() {   # live none|native|pgcutover ROUND
  local who="$1" r="$2" out="$BENCH_TMP/logs/pgb-$1-$2.txt" csv="$BENCH_TMP/logs/lag-$1-$2.csv" pids ts te n hb_pid=""
  if [ "$who" = none ]; then only; else only "$who"; fi
  src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null; sleep 2
  pids=$(repl_pids)
  # shellcheck disable=SC2086
  cpu_ticks $pids > "$BENCH_TMP/cpu0"
  case "$who" in
    native) start_lag_sampler "$csv" $((PGBENCH_T + 600)) bench_sub ;;
    pgcutover)
      start_lag_sampler "$csv" $((PGBENCH_T + 600)) pgcutover_bench
      local addr; addr=$(api_addr)
      ( end=$(( $(date +%s) + PGBENCH_T + 5 ))
        while [ "$(date +%s)" -lt "$end" ]; do
          curl -s "http://$addr/status" | grep -o '"lag_seconds":[0-9.e-]*' | cut -d: -f2 >> "$HB"
          sleep 0.25
        done ) &
      hb_pid=$!; BG_PIDS+=("$hb_pid") ;;
  esac
  # autovacuum workers running on either cluster, sampled every second of the round: their
  # work takes the same cores as pgbench and the consumer
  ( for _ in $(seq 1 $((PGBENCH_T + 5))); do autovacuums; sleep 1; done ) > "$BENCH_TMP/av-live" &
  local av_pid=$!; BG_PIDS+=("$av_pid")
  ts=$(now)
  run_pgbench "$SRC_PORT" "$out" -c "$CLIENTS" -j "$THREADS" -T "$PGBENCH_T"
  te=$(now)
  kill "$av_pid" 2>/dev/null; wait "$av_pid" 2>/dev/null || true
  local av; av=$(awk '{s += $1} END {print s + 0}' "$BENCH_TMP/av-live")
  raw "autovacuum_worker_seconds_$who" "$r" "$av" s
  AV_LIVE[$who]+="$av "
  [ -n "$hb_pid" ] && { kill "$hb_pid" 2>/dev/null; wait "$hb_pid" 2>/dev/null || true; }
  if [ "$who" != none ]; then
    local db="$DBNAME"; [ "$who" = pgcutover ] && db="$OURDB"
    id=$(put_marker); wait_marker_in "$db" "$id"
    stop_lag_sampler
    awk -F, -v a="$ts" -v b="$te" 'NR>1 && $1>=a && $1<=b && $4>=0 {print $4}' "$csv" >> "$(eval echo "\$SLOTLAG_$who")"
  fi
  # shellcheck disable=SC2086
  cpu_ticks $pids > "$BENCH_TMP/cpu1"
  n=$(awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]}' "$out")
  local tps; tps=$(pgbench_tps "$out")
  raw "tps_$who" "$r" "$tps" tps
  eval "TPS_LIST_$who+=(\"$tps\")"
  if [ "$who" != none ]; then
    local cpu; cpu=$(calc "$(ticks_between "$BENCH_TMP/cpu0" "$BENCH_TMP/cpu1") * 1000 / $(getconf CLK_TCK) * 1000 / $n" 0)
    raw "cpu_ms_per_1000_txns_$who" "$r" "$cpu" ms
    eval "CPU_LIST_$who+=(\"$cpu\")"
  fi
}
ORDERS=("none native pgcutover" "native pgcutover none" "pgcutover none native")
# LIVE=0 skips this part (for a quicker look at the catch-up alone)
[ "${LIVE:-1}" = 0 ] || for r in $(seq 1 "$REPS"); do
  for who in ${ORDERS[$(( (r - 1) % 3 ))]}; do live "$who" "$r"; done
done

# ---- 2. catch-up
declare -A RATE_LIST CPU_OF
# CPU seconds a process has used since it started (the consumer's processes start with it)
cpu_s() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; calc "$t/$(getconf CLK_TCK)" 2; }
# The whole machine's clock ticks so far: busy, idle, idle waiting for I/O, and stolen by
# the hypervisor (the time a virtual CPU wanted to run and the host ran something else).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5, $6, $9}' /proc/stat; }
# HOG=PCT: a neighbour, one process that keeps PCT % of one core busy (5 ms slices) during
# every catch-up of both consumers, to see how each one's rate bears a share of the cores
# taken by someone else (default 0: none).
HOG="${HOG:-0}"
hog_on() {
  [ "$HOG" = 0 ] && return 0
  perl -MTime::HiRes=time,sleep -e '
    my ($busy, $t) = (0.005, 0); my $idle = $busy * (100 - $ARGV[0]) / $ARGV[0];
    for (1 .. 200000) { $t = time; 1 while time - $t < $busy; sleep $idle }' "$HOG" &
  HOG_PID=$!; BG_PIDS+=("$HOG_PID")
}
hog_off() { [ -z "${HOG_PID:-}" ] || { kill "$HOG_PID" 2>/dev/null; wait "$HOG_PID" 2>/dev/null || true; HOG_PID=""; }; }
# WAITS=1: during every catch-up, one session on each cluster looks ten times a second at
# what the consumer's server processes wait for (`wait_event`; CPU when none) and the counts
# are recorded (RAW catchup_<workload>_waits_{source,target}_<who>); off by default (two
# more sessions on the machine).
waits_on() {   # waits_on WHO
  [ "${WAITS:-0}" = 0 ] && return 0
  local tgt="application_name = 'pgcutover-apply'"
  [ "$1" = native ] && tgt="backend_type = 'logical replication worker'"
  wait_sampler "$SRC_PORT" "backend_type = 'walsender'" > "$BENCH_TMP/waits-source" 2>&1 &
  WAITS_PIDS=("$!"); BG_PIDS+=("$!")
  wait_sampler "$DST_PORT" "$tgt" > "$BENCH_TMP/waits-target" 2>&1 &
  WAITS_PIDS+=("$!"); BG_PIDS+=("$!")
}
wait_sampler() {   # wait_sampler PORT FILTER: a warning per process and sample, for 10 min at most
  PGAPPNAME=bench_waits psql_port "$1" -d postgres -c "DO \$\$ DECLARE r record; BEGIN
      FOR i IN 1..6000 LOOP
        PERFORM pg_stat_clear_snapshot();
        FOR r IN SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w
                   FROM pg_stat_activity WHERE $2 LOOP
          RAISE WARNING 'W %', r.w;   -- the harness hides notices
        END LOOP;
        PERFORM pg_sleep(0.1);
      END LOOP; END \$\$" || true
}
waits_off() {   # waits_off WORKLOAD WHO ROUND
  [ "${WAITS:-0}" = 0 ] && return 0
  local side port
  for port in "$SRC_PORT" "$DST_PORT"; do
    psql_port "$port" -d postgres -At -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE application_name = 'bench_waits'" >/dev/null
  done
  wait "${WAITS_PIDS[@]}" 2>/dev/null || true
  for side in source target; do
    raw "catchup_${1}_waits_${side}_$2" "$3" "$(awk '/WARNING:  W / {print $NF}' "$BENCH_TMP/waits-$side" \
      | sort | uniq -c | sort -rn | awk '{printf "%s%s=%d", (NR > 1 ? "," : ""), $2, $1}')" samples
  done
}
# The walsender's socket so far (source side), "bytes_sent data_segs_out mean": how many TCP
# segments carried the stream. A reader that keeps its window open gets each message in a
# segment of its own (a few hundred bytes), sent and, over loopback, delivered inside the
# walsender's send(); a closed window has the kernel queue the messages and send them later
# in large segments (BENCHMARKS.md, session 25).
socket_segments() {   # socket_segments PID
  ss -tinpH state established "( sport = :$SRC_PORT )" 2>/dev/null | awk -v pid="pid=$1," '
    index($0, pid) {hit = 1; next}
    hit && /segs_out/ {
      b = 0; g = 0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^bytes_sent:/) {split($i, a, ":"); b = a[2]}
        if ($i ~ /^data_segs_out:/) {split($i, a, ":"); g = a[2]}
      }
      printf "%d %d %d\n", b, g, (g > 0 ? b / g : 0); exit
    }
    {hit = 0}'
}
# Context switches, voluntary and not, of process $1 and all its threads so far
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'
}
# Updates of pgbench_accounts in database $1 on the target so far, and how many of them were
# HOT (the new row version on the old one's page, no index entry added): "total hot". Read
# with no session of the consumer left (a backend reports its counts when it ends).
updates_of() {
  psql_port "$DST_PORT" -d "$1" -At -F' ' -c "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
    WHERE relid = 'public.pgbench_accounts'::regclass"
}
# The pages of pgbench_accounts and of its key's index in database $1: "heap index".
pages_of() {
  psql_port "$DST_PORT" -d "$1" -At -F' ' -c "SELECT pg_relation_size('public.pgbench_accounts') / 8192,
    pg_relation_size('public.pgbench_accounts_pkey') / 8192"
}
hot_share() {   # hot_share "TOTAL0 HOT0" "TOTAL1 HOT1" -> per cent of the updates between that were HOT
  local a0 h0 a1 h1; read -r a0 h0 <<< "$1"; read -r a1 h1 <<< "$2"
  if [ "$((a1 - a0))" -gt 0 ]; then calc "100 * ($h1 - $h0) / ($a1 - $a0)" 1; else echo NA; fi
}
# Every process's CPU clock ticks so far, "pid ticks" (the command name in /proc/PID/stat may
# hold spaces: the fields are counted after its closing parenthesis; a process that ended
# since the glob is skipped).
all_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } \
    | awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print $1, f[12] + f[13] }'
}
# The processes that took the most CPU between two all_ticks snapshots, leaving out the PIDs
# given (the consumer's own): "title=seconds,..." for the top 4, the title from the process's
# command line (a server process shows its role there: "postgres: checkpointer", ...), then
# "(all)=seconds" for every such process together. A process that started in between counts
# all its ticks; one that ended in between is missed, so the machine's "other" core-seconds
# less "(all)" is what ended processes (a finished autovacuum worker, say) and interrupts took.
top_others() {   # top_others BEFORE AFTER PID...
  local before="$1" after="$2" tck p t title; shift 2
  tck=$(getconf CLK_TCK)
  awk -v skip=" $* " 'NR == FNR {a[$1] = $2; next} index(skip, " " $1 " ") == 0 {d = $2 - a[$1]; if (d > 0) print $1, d}' \
    "$before" "$after" | sort -k2 -rn > "$BENCH_TMP/others"
  { head -4 "$BENCH_TMP/others" | while read -r p t; do
      title=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-48 | sed 's/ *$//; s/[,=]/ /g')
      printf '%s=%s\n' "${title:-pid $p}" "$(calc "$t / $tck" 2)"
    done
    echo "(all)=$(calc "$(awk '{s += $2} END {print s + 0}' "$BENCH_TMP/others") / $tck" 2)"
  } | paste -sd, -
}
# What the target cluster has written to its WAL so far (pg_stat_wal): "records fpi bytes".
# A backend adds its counts when it ends at the latest, so read once the consumer stopped.
target_wal() {
  dst -At -F' ' -c "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
}
wal_delta() {   # wal_delta "R0 F0 B0" "R1 F1 B1" -> "records fpi MB"
  local r0 f0 b0 r1 f1 b1; read -r r0 f0 b0 <<< "$1"; read -r r1 f1 b1 <<< "$2"
  echo "$((r1 - r0)) $((f1 - f0)) $(calc "($b1 - $b0) / 1048576" 1)"
}
catchup() {   # catchup native|pgcutover WORKLOAD ROUND MARKER
  local who="$1" w="$2" r="$3" id="$4" db="$DBNAME" t0 t1 rate changes ws apply daemon=0 upd0
  [ "$who" = pgcutover ] && db="$OURDB"
  upd0=$(updates_of "$db")
  local pages0; pages0=$(pages_of "$db")
  local wal0 wal; wal0=$(target_wal)
  hog_on; waits_on "$who"
  all_ticks > "$BENCH_TMP/ticks0"
  read -r busy0 idle0 iowait0 steal0 < <(machine_ticks)
  t0=$(now)
  if [ "$who" = native ]; then native_on; else ours_on; fi
  wait_marker_in "$db" "$id"
  t1=$(now)
  read -r busy1 idle1 iowait1 steal1 < <(machine_ticks)
  all_ticks > "$BENCH_TMP/ticks1"
  hog_off; waits_off "$w" "$who" "$r"
  raw "catchup_${w}_autovacuums_at_end_$who" "$r" "$(autovacuums)" workers
  # where the catch-up's CPU went: the source's walsender, the target's apply backends (the
  # native worker, or pgcutover's sessions), pgcutover's daemon
  local wsp applyp
  if [ "$who" = native ]; then
    wsp=$(srcq "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'bench_sub'")
    ws=$(cpu_s "$wsp")
    applyp=$(dst -At -c "SELECT pid FROM pg_stat_subscription WHERE subname = 'bench_sub' AND pid IS NOT NULL")
  else
    wsp=$(srcq "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'pgcutover_bench'")
    ws=$(cpu_s "$wsp")
    applyp=$(dst -At -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgcutover-apply'")
    daemon=$(cpu_s "$DAEMON_PID")
  fi
  # shellcheck disable=SC2086
  apply=$(cpu_s $applyp)
  local segs; segs=$(socket_segments "$wsp")
  raw "catchup_${w}_walsender_segments_$who" "$r" "$segs" "bytes/segments"
  CPU_OF[$who.$w.segs]+="$(echo "$segs" | awk '{print ($2 == "" ? "NA" : $2)}') "
  CPU_OF[$who.$w.segbytes]+="$(echo "$segs" | awk '{print ($3 == "" ? "NA" : $3)}') "
  # shellcheck disable=SC2086
  raw "catchup_${w}_top_others_$who" "$r" \
    "$(top_others "$BENCH_TMP/ticks0" "$BENCH_TMP/ticks1" "$wsp" $applyp "${DAEMON_PID:-0}")" s
  raw "catchup_${w}_cpu_s_walsender_$who" "$r" "$ws" s; raw "catchup_${w}_cpu_s_apply_$who" "$r" "$apply" s
  # How often the walsender and the daemon were switched out (each process started with this
  # catch-up): a reader that empties its socket is woken for each message sent after.
  local swws swd=0; swws=$(switches "$wsp")
  raw "catchup_${w}_switches_walsender_$who" "$r" "$swws" switches
  [ "$who" = pgcutover ] && swd=$(switches "$DAEMON_PID") && raw "catchup_${w}_switches_daemon" "$r" "$swd" switches
  CPU_OF[$who.$w.swws]+="$swws "; CPU_OF[$who.$w.swd]+="$swd "
  [ "$who" = pgcutover ] && raw "catchup_${w}_cpu_s_daemon" "$r" "$daemon" s
  CPU_OF[$who.$w.ws]+="$ws "; CPU_OF[$who.$w.apply]+="$apply "; CPU_OF[$who.$w.daemon]+="$daemon "
  raw "catchup_${w}_seconds_$who" "$r" "$(elapsed "$t0" "$t1")" s
  CPU_OF[$who.$w.wall]+="$(elapsed "$t0" "$t1") "
  # the rest of the machine over the catch-up, in core-seconds: idle (of it, waiting for
  # I/O), taken by the host, and busy with anything but this consumer's processes (the hog,
  # autovacuum, checkpoints, ...)
  local tck k v; tck=$(getconf CLK_TCK)
  for k in idle iowait steal other; do
    case $k in
      idle) v=$(calc "($idle1 - $idle0 + $iowait1 - $iowait0) / $tck" 2) ;;
      iowait) v=$(calc "($iowait1 - $iowait0) / $tck" 2) ;;
      steal) v=$(calc "($steal1 - $steal0) / $tck" 2) ;;
      other) v=$(calc "($busy1 - $busy0) / $tck - $ws - $apply - $daemon" 2) ;;
    esac
    raw "catchup_${w}_machine_${k}_core_s_$who" "$r" "$v" s
    CPU_OF[$who.$w.$k]+="$v "
  done
  if [ "$who" = native ]; then native_off; else ours_off; fi
  # the WAL the catch-up made the target write (its records, full-page images, MB): the
  # WAL writer's CPU beside a catch-up follows it
  wal=$(wal_delta "$wal0" "$(target_wal)")
  raw "catchup_${w}_target_wal_$who" "$r" "$wal" "records/fpi/MB"
  CPU_OF[$who.$w.walfpi]+="$(echo "$wal" | awk '{print $2}') "; CPU_OF[$who.$w.walmb]+="$(echo "$wal" | awk '{print $3}') "
  same_or_die "$db" "$who $w catch-up"
  # the pages the catch-up added to the table and to its key's index (an update that finds
  # no room on its page puts its row on a new one and adds an index entry; a full leaf of
  # the index either sheds entries of versions dead to every snapshot or splits)
  local grew; grew=$(paste -d' ' <(echo "$pages0") <(pages_of "$db") | awk '{print $3 - $1, $4 - $2}')
  raw "catchup_${w}_pages_added_$who" "$r" "$grew" "heap/index"
  CPU_OF[$who.$w.heapadd]+="$(echo "$grew" | awk '{print $1}') "; CPU_OF[$who.$w.idxadd]+="$(echo "$grew" | awk '{print $2}') "
  local hot; hot=$(hot_share "$upd0" "$(updates_of "$db")")
  raw "catchup_${w}_hot_update_pct_$who" "$r" "$hot" %
  CPU_OF[$who.$w.hot]+="$hot "
  settle "$DST_PORT" "$db"
  if [ "$w" = pgbench ]; then changes=$((N_TX / CLIENTS * CLIENTS * 4)); else changes=$BULK_ROWS; fi
  rate=$(calc "$changes/$(elapsed "$t0" "$t1")" 0)
  raw "catchup_${w}_rows_per_s_$who" "$r" "$rate" rows/s
  RATE_LIST[$who.$w]+="$rate "
}
# SETTLE=1 (the default since session 26) vacuums, untimed, what a catch-up leaves to
# autovacuum before the next one starts: the source's database after the backlog is written
# (the WAL that vacuum writes comes after the marker, so no consumer's clock sees it), and
# the target database a consumer has just caught up (before the other consumer's catch-up).
# Without it the rows a backlog leaves dead are vacuumed by autovacuum whenever its next
# round falls, often beside the *other* consumer's catch-up (sessions 25 and 26 found rounds
# with 3.5-4 core-seconds of other processes and an autovacuum worker at their end). Each
# consumer's table is vacuumed after each of its catch-ups, so both meet the same state.
# SETTLE=0 leaves it all to autovacuum, as every run before session 26.
settle() {   # settle PORT DB
  [ "${SETTLE:-1}" = 0 ] && return 0
  psql_port "$1" -d "$2" -c VACUUM >/dev/null
}
# Autovacuum during the catch-ups. The backlog just written makes the source vacuum its
# tables, and the consumer that went first leaves its database on the target to be
# vacuumed while the second one catches up: that database exists only because both consumers
# share one target cluster here, and the vacuum costs a consumer that keeps both cores busy
# (pgcutover) more than one that leaves a core idle (the native worker). QUIET=1 starts each
# catch-up's clock on a quiet machine: no autovacuum worker on either cluster (waited for, up
# to 300 s); a worker may still start during the catch-up. Either way the script records how
# many were running when each catch-up ended. (Session 18's run with QUIET=1 did not differ
# from those without, so the default stays 0, as in every run before.)
no_autovacuum() { [ "$(autovacuums)" = 0 ]; }
quiet() {   # quiet WHO WORKLOAD ROUND
  local t0; t0=$(now)
  wait_until 300 0.5 no_autovacuum \
    || note "autovacuum still running after 300 s before the $2 catch-up of $1 (round $3)"
  raw "quiet_wait_s_${2}_$1" "$3" "$(elapsed "$t0" "$(now)")" s
}
# The state the bulk backlog finds pgbench_accounts in on the target (both databases alike)
# weighs on every consumer's apply: BULK_STATE=fresh rewrites it first (VACUUM FULL: packed
# pages and a clean index, as a full load leaves a table, which is what the backlog that
# built up during a migration's load meets); vacuumed reclaims the previous round's dead rows
# first (VACUUM: room in the pages); asis (the default) leaves it to autovacuum, which may or
# may not have run since the previous round.
bulk_state() {
  case "$BULK_STATE" in
    fresh) dst -c "VACUUM FULL pgbench_accounts" >/dev/null; ourq "VACUUM FULL pgbench_accounts" >/dev/null ;;
    vacuumed) dst -c "VACUUM pgbench_accounts" >/dev/null; ourq "VACUUM pgbench_accounts" >/dev/null ;;
    asis) ;;
    *) die "BULK_STATE is fresh, vacuumed or asis" ;;
  esac
}
# CATCHUP=0 skips this part and the floor (for a look at the live figures alone)
[ "${CATCHUP:-1}" = 0 ] || for r in $(seq 1 "$REPS"); do
  for w in $WORKLOADS; do
    only
    [ "$w" = bulk ] && bulk_state
    src -c CHECKPOINT >/dev/null; dst -c CHECKPOINT >/dev/null
    if [ "$w" = pgbench ]; then workload_pgbench "$N_TX"; else workload_bulk "$BULK_ROWS" "$BATCH"; fi
    id=$(put_marker)
    settle "$SRC_PORT" "$DBNAME"
    # the second consumer reads WAL the first one's walsender brought into the page cache:
    # alternate who goes first
    if [ $((r % 2)) = 1 ]; then firsts="native pgcutover"; else firsts="pgcutover native"; fi
    for who in $firsts; do
      [ "${QUIET:-0}" = 0 ] || quiet "$who" "$w" "$r"
      # native_on waits out the launcher's restart interval before its clock starts
      if [ "$who" = native ]; then
        while [ "$(elapsed "$NATIVE_OFF_AT" "$(now)" | cut -d. -f1)" -lt 6 ]; do sleep 0.2; done
      fi
      catchup "$who" "$w" "$r" "$id"
    done
  done
done
# ---- 2b. the floor of the bulk backlog's apply on this machine: the same 1M rows updated on
# pgcutover's target database in two sessions at once, 5000 rows a transaction, keys
# generated server-side and every row set to its own value (nothing read from a client,
# nothing decoded, content unchanged), the table read over each transaction's key range and
# joined by hashing (cheaper than an index lookup per row for keys this dense; `+ 0` keeps
# the planner from the lookups): the heap and index work any consumer's apply does at least.
# With the walsender's decoding it bounds any consumer's catch-up on these 2 cores.
floor_session() {   # floor_session FIRST_KEY ROWS -> CPU clock ticks the session used
  psql_port "$DST_PORT" -d "$OURDB" -At \
    -c "SET synchronous_commit = off; SET enable_seqscan = off; SET jit = off" \
    -c "DO \$\$ BEGIN FOR i IN 0..($2 / 5000 - 1) LOOP
          UPDATE pgbench_accounts a SET abalance = a.abalance
            FROM unnest(ARRAY(SELECT generate_series($1 + i * 5000, $1 + i * 5000 + 4999))) k
           WHERE (a.aid + 0) = k AND a.aid BETWEEN $1 + i * 5000 AND $1 + i * 5000 + 4999;
          COMMIT;
        END LOOP; END \$\$" \
    -c "SELECT split_part(s, ' ', 14)::int + split_part(s, ' ', 15)::int FROM pg_read_file('/proc/self/stat') s" \
    | tail -1
}
FLOOR_CPU=(); FLOOR_HOT=()
[ "${CATCHUP:-1}" = 0 ] || [[ " $WORKLOADS " != *" bulk "* ]] || for r in $(seq 1 "$REPS"); do
  bulk_state
  dst -c CHECKPOINT >/dev/null
  half=$((BULK_ROWS / 2))
  upd0=$(updates_of "$OURDB")
  f0=$(now)
  floor_session 1 "$half" > "$BENCH_TMP/floor-0" & fa=$!
  floor_session $((half + 1)) "$half" > "$BENCH_TMP/floor-1" & fb=$!
  wait "$fa" "$fb"
  f1=$(now)
  cpu=$(calc "($(cat "$BENCH_TMP/floor-0") + $(cat "$BENCH_TMP/floor-1")) / $(getconf CLK_TCK)" 2)
  raw floor_bulk_cpu_s "$r" "$cpu" s; raw floor_bulk_seconds "$r" "$(elapsed "$f0" "$f1")" s
  hot=$(hot_share "$upd0" "$(updates_of "$OURDB")"); raw floor_bulk_hot_update_pct "$r" "$hot" %
  FLOOR_HOT+=("$hot")
  FLOOR_CPU+=("$cpu")
done
[ "${CATCHUP:-1}" = 0 ] || same_or_die "$OURDB" "the floor's updates"

"$PGCUTOVER" cleanup --config "$cfg" >/dev/null
native_drop_sub

# ---- results
# shellcheck disable=SC2068
med() { median $@; }
TPS_BASE=$(med "${TPS_LIST_none[@]}"); TPS_NATIVE=$(med "${TPS_LIST_native[@]}"); TPS_OURS=$(med "${TPS_LIST_pgcutover[@]}")
CPU_NATIVE=$(med "${CPU_LIST_native[@]}"); CPU_OURS=$(med "${CPU_LIST_pgcutover[@]}")
metric tps_no_replication "$TPS_BASE" tps; metric tps_native "$TPS_NATIVE" tps; metric tps_pgcutover "$TPS_OURS" tps
metric cpu_ms_per_1000_txns_native "$CPU_NATIVE" ms; metric cpu_ms_per_1000_txns_pgcutover "$CPU_OURS" ms
lag_of() { sort -g "$1" | awk '{v[NR]=$1} END{ if(NR==0){print "NA NA NA"; exit} i=int(0.5*NR+0.5); if(i<1)i=1; j=int(0.99*NR+0.999); if(j>NR)j=NR; print v[i], v[j], v[NR] }'; }
read -r NATIVE_LAG_MED _ NATIVE_LAG_MAX <<<"$(lag_of "$SLOTLAG_native")"
read -r OURS_LAG_MED _ OURS_LAG_MAX <<<"$(lag_of "$SLOTLAG_pgcutover")"
read -r HB_P50 HB_P99 HB_MAX <<<"$(lag_of "$HB")"
metric native_slot_lag_median "$NATIVE_LAG_MED" bytes; metric native_slot_lag_max "$NATIVE_LAG_MAX" bytes
metric pgcutover_slot_lag_median "$OURS_LAG_MED" bytes; metric pgcutover_slot_lag_max "$OURS_LAG_MAX" bytes
metric pgcutover_lag_p50 "$HB_P50" s; metric pgcutover_lag_p99 "$HB_P99" s; metric pgcutover_lag_max "$HB_MAX" s
metric pgcutover_lag_samples "$(wc -l < "$HB")" samples
declare -A RATE CPU_MED
ran() { [ "${CATCHUP:-1}" != 0 ] && [[ " $WORKLOADS " == *" $1 "* ]]; }   # ran WORKLOAD
for w in $WORKLOADS; do
  ran "$w" || continue
  for k in "native.$w" "pgcutover.$w"; do
    # shellcheck disable=SC2086
    RATE[$k]=$(med ${RATE_LIST[$k]})
    metric "catchup_${w}_rows_per_s_${k%.*}" "${RATE[$k]}" rows/s
  done
done
metric pgcutover_peak_rss "$(calc "$PEAK_KB/1024" 1)" MB
if ran bulk; then
  # shellcheck disable=SC2086
  for k in native.bulk.ws native.bulk.apply pgcutover.bulk.ws pgcutover.bulk.apply pgcutover.bulk.daemon \
    native.bulk.wall pgcutover.bulk.wall {native,pgcutover}.bulk.{idle,iowait,steal,other,hot,swws,segs,segbytes,walfpi,walmb,heapadd,idxadd} pgcutover.bulk.swd; do
    CPU_MED[$k]=$(med ${CPU_OF[$k]})
  done
  # shellcheck disable=SC2086
  WS_MIN=$(minof ${CPU_OF[native.bulk.ws]} ${CPU_OF[pgcutover.bulk.ws]})
  FLOOR=$(med "${FLOOR_CPU[@]}"); FLOOR_HOT_MED=$(med "${FLOOR_HOT[@]}")
  BOUND=$(calc "($WS_MIN + $FLOOR) / 2" 2)
  metric floor_bulk_cpu_s "$FLOOR" s; metric walsender_bulk_cpu_s_min "$WS_MIN" s
  metric bound_bulk_seconds "$BOUND" s; metric bound_bulk_rows_per_s "$(calc "$BULK_ROWS/$BOUND" 0)" rows/s
fi

pct() { calc "100*($1-$TPS_BASE)/$TPS_BASE" 1; }
{
  echo
  echo "| SCALE=$SCALE, pgbench -c$CLIENTS -j$THREADS -T$PGBENCH_T, medians of $REPS rounds | native subscription | **pgcutover** |"
  echo "| --- | --- | --- |"
  # Each half's rows only when it ran (LIVE=0 or CATCHUP=0 leaves one out).
  if [ "${LIVE:-1}" != 0 ]; then
  echo "| source TPS (no replication: $TPS_BASE) | $TPS_NATIVE ($(pct "$TPS_NATIVE") %) | $TPS_OURS ($(pct "$TPS_OURS") %) |"
  # shellcheck disable=SC2086
  echo "| autovacuum worker-seconds during the round (none: $(med ${AV_LIVE[none]})) | $(med ${AV_LIVE[native]}) | $(med ${AV_LIVE[pgcutover]}) |"
  echo "| replication CPU per 1000 source transactions (ms) | $CPU_NATIVE | $CPU_OURS ($(calc "$CPU_OURS/$CPU_NATIVE" 2)x) |"
  echo "| slot lag under pgbench, median / max (bytes) | $NATIVE_LAG_MED / $NATIVE_LAG_MAX | $OURS_LAG_MED / $OURS_LAG_MAX |"
  echo "| end-to-end lag under pgbench, p50 / p99 / max (s) | – | $HB_P50 / $HB_P99 / $HB_MAX |"
  fi
  if ran pgbench; then
  echo "| catch-up, pgbench backlog ($((N_TX / CLIENTS * CLIENTS * 4)) changes) | ${RATE[native.pgbench]} rows/s | ${RATE[pgcutover.pgbench]} rows/s ($(calc "${RATE[pgcutover.pgbench]}/${RATE[native.pgbench]}" 2)x) |"
  fi
  if ran bulk; then
  echo "| catch-up, bulk backlog ($BULK_ROWS rows, $BATCH-row txns, target table $BULK_STATE) | ${RATE[native.bulk]} rows/s | ${RATE[pgcutover.bulk]} rows/s ($(calc "${RATE[pgcutover.bulk]}/${RATE[native.bulk]}" 2)x) |"
  # The rounds alternate the two consumers on the same clusters: each round's ratio shows how
  # far the machine's own variation moves the median above.
  # shellcheck disable=SC2086
  echo "| bulk catch-up, round by round: pgcutover's rate / native's | | $(paste -d' ' <(printf '%s\n' ${RATE_LIST[native.bulk]}) <(printf '%s\n' ${RATE_LIST[pgcutover.bulk]}) | awk '{printf "%s%.2fx", (NR > 1 ? ", " : ""), $2 / $1}') |"
  echo "| bulk catch-up: seconds; CPU s of walsender / apply / daemon | ${CPU_MED[native.bulk.wall]}; ${CPU_MED[native.bulk.ws]} / ${CPU_MED[native.bulk.apply]} / – | ${CPU_MED[pgcutover.bulk.wall]}; ${CPU_MED[pgcutover.bulk.ws]} / ${CPU_MED[pgcutover.bulk.apply]} / ${CPU_MED[pgcutover.bulk.daemon]} |"
  echo "| bulk catch-up: the rest of the machine, core-seconds idle (of it waiting for I/O) / stolen by the host / busy with other processes$([ "$HOG" = 0 ] || echo " (a neighbour took $HOG % of a core)") | ${CPU_MED[native.bulk.idle]} (${CPU_MED[native.bulk.iowait]}) / ${CPU_MED[native.bulk.steal]} / ${CPU_MED[native.bulk.other]} | ${CPU_MED[pgcutover.bulk.idle]} (${CPU_MED[pgcutover.bulk.iowait]}) / ${CPU_MED[pgcutover.bulk.steal]} / ${CPU_MED[pgcutover.bulk.other]} |"
  echo "| bulk catch-up: context switches of the walsender / the daemon | ${CPU_MED[native.bulk.swws]} / – | ${CPU_MED[pgcutover.bulk.swws]} / ${CPU_MED[pgcutover.bulk.swd]} |"
  echo "| bulk catch-up: TCP segments the walsender's stream went out in (mean bytes each) | ${CPU_MED[native.bulk.segs]} (${CPU_MED[native.bulk.segbytes]}) | ${CPU_MED[pgcutover.bulk.segs]} (${CPU_MED[pgcutover.bulk.segbytes]}) |"
  echo "| bulk catch-up: the target's WAL, MB (full-page images) | ${CPU_MED[native.bulk.walmb]} (${CPU_MED[native.bulk.walfpi]}) | ${CPU_MED[pgcutover.bulk.walmb]} (${CPU_MED[pgcutover.bulk.walfpi]}) |"
  echo "| bulk catch-up: pages added to the table / to its key's index | ${CPU_MED[native.bulk.heapadd]} / ${CPU_MED[native.bulk.idxadd]} | ${CPU_MED[pgcutover.bulk.heapadd]} / ${CPU_MED[pgcutover.bulk.idxadd]} |"
  echo "| bulk catch-up: updates of pgbench_accounts that were HOT (no new index entry), % | ${CPU_MED[native.bulk.hot]} | ${CPU_MED[pgcutover.bulk.hot]} |"
  echo "| floor: the bulk's rows updated over their key range in 2 sessions, nothing decoded (CPU s; HOT %) | $FLOOR; $FLOOR_HOT_MED | |"
  echo "| bound for any consumer on $(nproc) cores: (least walsender CPU $WS_MIN + floor) / $(nproc) | $BOUND s = $(calc "$BULK_ROWS/$BOUND" 0) rows/s = $(calc "$BULK_ROWS/$BOUND/${RATE[native.bulk]}" 2)x native | |"
  fi
  echo "| daemon peak RSS | – | $(calc "$PEAK_KB/1024" 1) MB |"
} | tee -a "$RESULT_FILE"
