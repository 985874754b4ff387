#!/bin/sh
# Guest scenario, run by /init. Settings come from the kernel command line:
#   mlsched.mode=bench|test   mlsched.runs=N   mlsched.configs=eevdf,model,model1,stay,migrate
#   mlsched.workers= mlsched.units= mlsched.spin= mlsched.sleep=   (mlsched-workload)
#
#   1. start mlsched-lite (run --pin --no-collector): it loads both levels of the
#      bundle's table into the pinned maps and answers every request they cannot;
#      configuration model1 asks the kernel for level 1 only (scx_mlsched --levels 1),
#      so what level 2 would answer travels the ring to mlsched-lite instead;
#   2. for each run, for each configuration (order rotated per run): attach the
#      scheduler (none for eevdf), run mlsched-workload, detach;
#   3. stop mlsched-lite.
# Every result is one line "@mlsched KIND JSON" on fd 3 (the host reads ttyS1).
set -u
mode=bench runs=3 configs=eevdf,model,model1,stay,migrate
workers=8 units=200 spin=200000 sleep=500
for w in $(cat /proc/cmdline); do
    case "$w" in
        mlsched.*=*) k=${w%%=*}; k=${k#mlsched.}; eval "$k=\${w#*=}" ;;
    esac
done

PIN=/sys/fs/bpf/mlsched
BUNDLE=/opt/mlsched/bundle
NCPUS=$(nproc)
daemon_pid=

emit() { printf '@mlsched %s %s\n' "$1" "$2" >&3; }
fail() { emit error "{\"message\": \"$*\"}"; echo "run.sh: $*" >&2; stop_daemon; exit 1; }
log() { echo "run.sh [$(cut -d' ' -f1 /proc/uptime)]: $*"; }

# wait_for SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds.
wait_for() {
    limit=$(( $1 * 5 )); shift
    while ! "$@" 2>/dev/null; do
        limit=$((limit - 1)); [ $limit -gt 0 ] || return 1
        sleep 0.2
    done
}
state_is() { [ "$(cat /sys/kernel/sched_ext/state)" = "$1" ]; }
# attached PID: the scheduler is enabled; gives up at once when the loader died.
attached() {
    state_is enabled && return 0
    kill -0 "$1" 2>/dev/null || { wait "$1"; fail "scx_mlsched exited before attaching ($?)"; }
    return 1
}

start_daemon() {
    log "starting mlsched-lite"
    python3 -m mlsched.runtime.cli run --bundle "$BUNDLE" --cpus "$NCPUS" --no-collector \
        --pin --pin-dir "$PIN" --interval 1 --stats-file /tmp/daemon.prom \
        --summary-json /tmp/daemon.json >/tmp/daemon.log 2>&1 &
    daemon_pid=$!
    # The stats file appears after the first interval: table loaded, serving.
    wait_for 180 test -s /tmp/daemon.prom || { cat /tmp/daemon.log; fail "mlsched-lite did not start"; }
    log "mlsched-lite serving (pid $daemon_pid)"
}

stop_daemon() {
    [ -n "$daemon_pid" ] || return 0
    kill -INT "$daemon_pid" 2>/dev/null
    wait "$daemon_pid"; rc=$?
    daemon_pid=
    tail -3 /tmp/daemon.log
    if [ -s /tmp/daemon.json ]; then emit daemon "$(cat /tmp/daemon.json)"; fi
    return $rc
}

# run_one CONFIG RUN: one workload run under CONFIG; emits a "run" line.
run_one() {
    cfg=$1 run=$2 sched_pid= scx=null ops=null
    rm -f /tmp/scx.json
    case "$cfg" in
        eevdf) ;;
        model) scx_mlsched --policy model --pin-dir "$PIN" -o /tmp/scx.json & sched_pid=$! ;;
        model1) scx_mlsched --policy model --levels 1 --pin-dir "$PIN" -o /tmp/scx.json &
            sched_pid=$! ;;
        stay|migrate) scx_mlsched --policy "$cfg" -o /tmp/scx.json & sched_pid=$! ;;
        *) fail "unknown configuration $cfg" ;;
    esac
    if [ -n "$sched_pid" ]; then
        wait_for 120 attached "$sched_pid" || fail "$cfg: scx_mlsched did not attach"
        ops="\"$(cat /sys/kernel/sched_ext/root/ops)\""
    fi
    log "run $run: $cfg (ops $ops)"
    out=$(mlsched-workload -w "$workers" -u "$units" -c "$spin" -s "$sleep") ||
        fail "$cfg: workload failed: $out"
    if [ -n "$sched_pid" ]; then
        state_is enabled || fail "$cfg: scheduler left during the run: $(cat /sys/kernel/sched_ext/state)"
        kill -INT "$sched_pid"
        wait "$sched_pid" || fail "$cfg: scx_mlsched exited with an error"
        wait_for 60 state_is disabled || fail "$cfg: sched_ext still $(cat /sys/kernel/sched_ext/state)"
        scx=$(cat /tmp/scx.json)
    fi
    log "run $run: $cfg: $out"
    emit run "{\"config\": \"$cfg\", \"run\": $run, \"ops\": $ops, \"workload\": $out, \"scx\": $scx}"
}

emit boot "{\"cpus\": $NCPUS, \"uptime_s\": $(cut -d' ' -f1 /proc/uptime), \"kernel\": \"$(uname -r)\", \"sched_ext\": \"$(cat /sys/kernel/sched_ext/state 2>/dev/null || echo missing)\", \"mode\": \"$mode\"}"
start_daemon
emit ready "{\"uptime_s\": $(cut -d' ' -f1 /proc/uptime)}"

case "$mode" in
    test) run_one model 1; run_one model1 1 ;;
    bench)
        list=$(echo "$configs" | tr ',' ' ')
        r=1
        while [ $r -le "$runs" ]; do
            for cfg in $list; do run_one "$cfg" $r; done
            # rotate: first configuration goes last, so none always runs first
            list="$(echo $list | cut -s -d' ' -f2-) $(echo $list | cut -d' ' -f1)"
            r=$((r + 1))
        done ;;
    *) fail "unknown mode $mode" ;;
esac

stop_daemon || fail "mlsched-lite exited with an error"
emit done "{\"uptime_s\": $(cut -d' ' -f1 /proc/uptime)}"
