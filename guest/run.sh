#!/bin/sh
# Guest scenario, run by /init. Settings come from the kernel command line:
#   mlsched.mode=bench|test|record   mlsched.runs=N   (test: a short check of each part)
#   mlsched.workloads=synthetic,hackbench-t2,hackbench-t4,hackbench-p2,hackbench-p4,stressng,build
#   mlsched.configs=eevdf,eevdf-aa,eevdf2,simple,central,model,model1,model-NAME,stay,migrate
#   mlsched.seed=N          the configurations' order in each round (see 2. below)
#   mlsched.warmup=N        discarded EEVDF runs of each workload before its rounds
#   mlsched.workers= mlsched.units= mlsched.spin= mlsched.sleep=   (synthetic: mlsched-workload)
#   mlsched.hb_loops=       hackbench messages per sender
#   mlsched.sng_ops=        stress-ng: bogo ops per cpu stressor (hdd: 10x, on tmpfs)
#   mlsched.build_jobs=     make -j of the build workload
#   mlsched.build_units=N   the build compiles the first N library units (0: all units)
#   mlsched.ws= mlsched.move_ns= mlsched.host_cal_us=   synthetic: each worker's working
#                           set (bytes), the host's measured cost of moving it (ns) and the
#                           host's time for the calibration (µs); with them every change of
#                           CPU of a worker costs move_ns x (guest's calibration / host's)
#
#   1. start one mlsched-lite (run --pin --no-collector) per bundle the configurations
#      use, each pinning its maps under /sys/fs/bpf/mlsched-NAME: model and model1 use
#      bundle default, model-NAME bundle NAME; mlsched-lite loads both levels of the
#      bundle's table and answers every request they cannot; model1 asks the kernel
#      for level 1 only (scx_mlsched --levels 1), so what level 2 would answer travels
#      the ring instead;
#   2. for each workload: `warmup` runs under EEVDF that are reported apart and left
#      out (they fill TCG's translation cache for the workload's code); then `runs`
#      rounds, each running every configuration once in a fresh random order (awk's
#      generator seeded from seed, workload and round: the same seed gives the same
#      order): attach the scheduler (none for eevdf and for eevdf-aa, a second
#      EEVDF configuration that measures the noise floor; simple and central are the
#      kernel's example schedulers scx_simple and scx_central), run the workload under
#      mlsched-measure (wall time, CPU migrations, context switches, CPU-to-CPU moves
#      and run-queue delays of its whole process tree, exit status), detach;
#   3. stop the mlsched-lite instances.
#
# mode=record gathers what `mlsched-train` learns from (guest/learn.py): every workload
# `runs` times under EEVDF with mlsched-lite's collector recording what EEVDF did
# (run --record: imitation), then `runs` times under configuration explore, scx_mlsched
# answering every balancer question with a coin (--explore 1000 --explore-out: outcomes);
# both files go to the host as "@mlsched file" records (gzip, base64).
# Every result is one line "@mlsched KIND JSON" on fd 3 (the host reads ttyS1); a
# workload that exits non-zero is a run with "failed": true, the scenario goes on.
set -u
mode=bench runs=3 configs=eevdf,model,model1,stay,migrate workloads=synthetic
seed=1 warmup=1
workers=8 units=200 spin=200000 sleep=500
hb_loops=100 sng_ops=50 build_jobs=8 build_units=0
ws=0 move_ns=0 host_cal_us=0 charge_ns=0
for w in $(cat /proc/cmdline); do
    case "$w" in
        mlsched.*=*) k=${w%%=*}; k=${k#mlsched.}; eval "$k=\${w#*=}" ;;
    esac
done

OPT=/opt/mlsched
NCPUS=$(nproc)
daemons=          # "NAME:PID ..." of the running mlsched-lite instances

emit() { printf '@mlsched %s %s\n' "$1" "$2" >&3; }
fail() { emit error "{\"message\": \"$*\"}"; echo "run.sh: $*" >&2; stop_daemons; exit 1; }
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
# attached PID: the scheduler is enabled (0), still starting (1), or its loader died (2).
attached() {
    state_is enabled && return 0
    kill -0 "$1" 2>/dev/null && return 1
    return 2
}

# attach CONFIG: start the scheduler of CONFIG and wait until sched_ext runs it (sched_pid
# empty for EEVDF). Any scheduler that exits before attaching ends the scenario, except
# scx_central: its init refuses to run anywhere but on its central CPU 0 ("init from
# non-central CPU"), and this kernel runs every scheduler's init in one real-time kernel
# thread (scx_ops_enable_helper) that stays on whichever CPU it last ran. Before
# scx_central starts, that thread is held on CPU 0 (it exists once any scheduler was
# enabled); a refusal is retried up to ATTACH_TRIES times. attach_tries says how many
# starts it took.
ATTACH_TRIES=8
attach() {
    attach_tries=0
    while :; do
        [ "$1" = central ] && hold_enable_helper_on_cpu0
        start_sched "$1"
        [ -n "$sched_pid" ] || return 0
        attach_tries=$((attach_tries + 1))
        limit=600
        while :; do
            attached "$sched_pid"
            case $? in
                0) return 0 ;;
                2) wait "$sched_pid"; rc=$?
                   [ "$1" = central ] && [ $attach_tries -lt $ATTACH_TRIES ] ||
                       fail "$1: scheduler exited before attaching ($rc)"
                   wait_for 60 state_is disabled || fail "$1: sched_ext stuck after a refusal"
                   log "$1: refused to attach ($rc), starting it again"
                   break ;;
            esac
            limit=$((limit - 1)); [ $limit -gt 0 ] || fail "$1: scheduler did not attach"
            sleep 0.2
        done
    done
}
hold_enable_helper_on_cpu0() {
    for d in /proc/[0-9]*; do
        case "$(cat "$d/comm" 2>/dev/null)" in
            scx_ops_enable*) taskset -p 1 "${d#/proc/}" >/dev/null ;;
        esac
    done
}

# bundle_of CONFIG: the bundle a configuration uses, none for the others.
bundle_of() {
    case "$1" in
        model|model1) echo default ;;
        model-*) echo "${1#model-}" ;;
    esac
}

start_daemon() {
    name=$1 dir=/tmp/daemon-$1
    [ -f "$OPT/bundles/$name/manifest.json" ] || fail "no bundle $name in this guest"
    mkdir -p "$dir"
    log "starting mlsched-lite for bundle $name"
    python3 -m mlsched.runtime.cli run --bundle "$OPT/bundles/$name" --cpus "$NCPUS" \
        --no-collector --pin --pin-dir "/sys/fs/bpf/mlsched-$name" --interval 1 \
        --stats-file "$dir/daemon.prom" --summary-json "$dir/daemon.json" \
        >"$dir/daemon.log" 2>&1 &
    daemons="$daemons $name:$!"
}

# wait_daemons: every instance started serves (they start side by side: minutes each
# under TCG). The stats file appears after the first interval: table loaded, serving.
wait_daemons() {
    for d in $daemons; do
        dir=/tmp/daemon-${d%%:*}
        wait_for 300 test -s "$dir/daemon.prom" ||
            { cat "$dir/daemon.log"; fail "mlsched-lite (${d%%:*}) did not start"; }
        log "mlsched-lite serving bundle ${d%%:*} (pid ${d#*:})"
    done
}

# start_recorder: mlsched-lite with the collector on, recording what EEVDF does.
start_recorder() {
    dir=/tmp/daemon-recorder
    mkdir -p "$dir"
    log "starting mlsched-lite, collector recording"
    python3 -m mlsched.runtime.cli run --bundle "$OPT/bundles/default" --cpus "$NCPUS" \
        --record /tmp/imitate.csv --interval 1 --stats-file "$dir/daemon.prom" \
        --summary-json "$dir/daemon.json" >"$dir/daemon.log" 2>&1 &
    daemons="$daemons recorder:$!"
    wait_for 240 test -s "$dir/daemon.prom" ||
        { cat "$dir/daemon.log"; fail "mlsched-lite (recorder) did not start"; }
    log "mlsched-lite recording (pid $!)"
}

# emit_file NAME PATH: the file to the host, compressed, as one record.
emit_file() {
    [ -s "$2" ] || fail "$1: $2 is empty"
    emit file "{\"name\": \"$1\", \"rows\": $(($(wc -l < "$2") - 1)), \"gzip_base64\": \"$(gzip -c "$2" | base64 | tr -d '\n')\"}"
}

stop_daemons() {
    rc=0
    for d in $daemons; do
        name=${d%%:*} pid=${d#*:} dir=/tmp/daemon-${d%%:*}
        kill -INT "$pid" 2>/dev/null
        wait "$pid" || rc=$?
        tail -3 "$dir/daemon.log"
        [ -s "$dir/daemon.json" ] &&
            emit daemon "$(sed "1s/^{/{\"bundle\": \"$name\", /" "$dir/daemon.json")"
    done
    daemons=
    return $rc
}

# start_sched CONFIG: start the scheduler of CONFIG in the background (sched_pid).
start_sched() {
    pin=/sys/fs/bpf/mlsched-$(bundle_of "$1")
    case "$1" in
        eevdf|eevdf-aa|eevdf2) ;;
        simple) scx_simple >/tmp/peer.log 2>&1 & sched_pid=$! ;;
        central) scx_central >/tmp/peer.log 2>&1 & sched_pid=$! ;;
        model|model-*) scx_mlsched --policy model --pin-dir "$pin" -o /tmp/scx.json &
            sched_pid=$! ;;
        model1) scx_mlsched --policy model --levels 1 --pin-dir "$pin" -o /tmp/scx.json &
            sched_pid=$! ;;
        stay|migrate) scx_mlsched --policy "$1" -o /tmp/scx.json & sched_pid=$! ;;
        explore) scx_mlsched --policy stay --explore 1000 --explore-out /tmp/explore.csv \
            -o /tmp/scx.json & sched_pid=$! ;;
        *) fail "unknown configuration $1" ;;
    esac
}

# sched_stats CONFIG: what the scheduler reported for the run, as JSON (null if nothing).
sched_stats() {
    case "$1" in
        simple|central)   # the last value of each counter the example printed
            # (scx_simple: "local=N global=N"; scx_central: "total   :  N    local:  N ...")
            sed 's/ *: */=/g' /tmp/peer.log | awk '
                { for (i = 1; i <= NF; i++)
                      if (split($i, kv, "=") == 2 && kv[2] ~ /^[0-9]+$/) v[kv[1]] = kv[2] }
                END { for (k in v) { out = out sep "\"" k "\": " v[k]; sep = ", " }
                      print (out == "" ? "null" : "{" out "}") }' ;;
        *) cat /tmp/scx.json ;;
    esac
}

# run_workload NAME: runs it under mlsched-measure (JSON into /tmp/measure.json); prints
# the workload's own result as JSON on stdout. Set-up and clean-up are not measured.
run_workload() {
    case "$1" in
        synthetic)
            $wrap mlsched-measure -o /tmp/measure.json -- \
                mlsched-workload -w "$workers" -u "$units" -c "$spin" -s "$sleep" \
                    -W "$ws" -M "$charge_ns" ;;
        hackbench-[tp][0-9]*)
            kind=$(echo "$1" | cut -c11) groups=${1#hackbench-?}
            [ "$kind" = t ] && flag=-T || flag=-P
            # -p: pipes (the guest kernel has no AF_UNIX sockets)
            $wrap mlsched-measure -o /tmp/measure.json -- \
                hackbench "$flag" -p -g "$groups" -l "$hb_loops" >/tmp/wl.out 2>&1
            t=$(sed -n 's/^Time: *\([0-9.]*\).*/\1/p' /tmp/wl.out)
            echo "{\"time_s\": ${t:-null}, \"groups\": $groups, \"loops\": $hb_loops}" ;;
        stressng)
            rm -rf /tmp/sng && mkdir -p /tmp/sng
            $wrap mlsched-measure -o /tmp/measure.json -- \
                stress-ng --cpu "$NCPUS" --cpu-ops "$sng_ops" --cache 2 --cache-ops 2 \
                --hdd 2 --hdd-ops "$((sng_ops * 10))" --hdd-bytes 4M --temp-path /tmp/sng \
                --metrics-brief --yaml /tmp/sng.yaml >/tmp/wl.out 2>&1
            # per stressor: bogo ops and its own wall time, from the YAML report
            awk '/- stressor:/ { s = $3 } /^ *bogo-ops:/ { o = $2 }
                 /wall-clock-time:/ { printf "%s\"%s\": {\"bogo_ops\": %s, \"wall_s\": %s}",
                                      sep, s, o, $2; sep = ", " }
                 BEGIN { printf "{\"stressors\": {" } END { print "}}" }' /tmp/sng.yaml
            rm -rf /tmp/sng /tmp/sng.yaml ;;
        build)
            rm -rf /tmp/build && cp -a "$OPT/build-src" /tmp/build
            targets=
            [ "$build_units" -gt 0 ] && targets=$(cd /tmp/build && ls library/*.c |
                head -n "$build_units" | sed 's/\.c$/.o/' | tr '\n' ' ')
            $wrap mlsched-measure -o /tmp/measure.json -- \
                make -s -f "$OPT/build.mk" -C /tmp/build -j"$build_jobs" $targets >/tmp/wl.out 2>&1
            echo "{\"objects\": $(find /tmp/build -name '*.o' | wc -l), \"jobs\": $build_jobs}"
            rm -rf /tmp/build ;;
        *) fail "unknown workload $1" ;;
    esac
}

# calibrate: how fast this guest runs a fixed compute loop on one CPU: 3 "calibrate"
# records; the host runs the same binary with the same arguments (bench.py's
# CALIBRATION_ARGS, which must equal these): their ratio is the guest's slowdown.
CALIBRATION_ARGS="-w 1 -u 100 -c 1000000 -s 0"
calibrate() {
    times=
    for i in 1 2 3; do
        out=$(taskset -c 0 mlsched-workload $CALIBRATION_ARGS) || fail "calibration run failed"
        emit calibrate "{\"args\": \"$CALIBRATION_ARGS\", ${out#\{}"
        times="$times $(echo "$out" | sed -n 's/.*"makespan_s": *\([0-9.]*\).*/\1/p')"
    done
    if [ "$move_ns" -gt 0 ] && [ "$host_cal_us" -gt 0 ]; then
        charge_ns=$(echo $times | tr ' ' '\n' | sort -n | sed -n 2p |
            awk -v m="$move_ns" -v h="$host_cal_us" '{ printf "%d", m * $1 * 1e6 / h }')
        log "a synthetic worker's move costs $charge_ns ns here ($move_ns ns on the host)"
    fi
}

# shuffled KEY WORD...: the words in a random order that KEY determines.
shuffled() {
    key=$1; shift
    printf '%s\n' "$@" | awk -v key="$key" 'BEGIN { srand(key) } { printf "%.9f %s\n", rand(), $0 }' |
        sort -n | cut -d' ' -f2 | tr '\n' ' '
}

# run_one WORKLOAD CONFIG RUN [KIND]: one run under CONFIG; emits a KIND (default "run")
# line; the position of CONFIG in its round's order is $pos.
run_one() {
    wl=$1 cfg=$2 run=$3 kind=${4:-run} sched_pid= scx=null ops=null wrap=
    # eevdf2: EEVDF with the workload on the two CPUs of domain 0 only
    [ "$cfg" = eevdf2 ] && wrap="taskset -c 0-1"
    rm -f /tmp/scx.json /tmp/peer.log /tmp/measure.json
    attach "$cfg"
    [ -n "$sched_pid" ] && ops="\"$(cat /sys/kernel/sched_ext/root/ops)\""
    log "$wl run $run: $cfg (ops $ops)"
    result=$(run_workload "$wl")
    measure=$(cat /tmp/measure.json 2>/dev/null) || fail "$wl: mlsched-measure failed"
    status=$(echo "$measure" | sed -n 's/.*"status": *\([0-9]*\).*/\1/p')
    [ "$status" = 0 ] && failed=false || { failed=true; tail -5 /tmp/wl.out; }
    ejected=null
    if [ -n "$sched_pid" ]; then
        if state_is enabled; then
            kill -INT "$sched_pid"
            wait "$sched_pid" || fail "$cfg: scheduler exited with an error"
        else
            # the kernel ejected the scheduler mid-run (its runtime error is the last
            # sched_ext line of the kernel log): a failed run of that configuration for a
            # kernel example; for scx_mlsched, a defect that ends the scenario
            ejected="\"$(dmesg | grep 'sched_ext: ' | tail -1 | sed 's/^\[[^]]*\] //; s/["\\]/ /g')\""
            case "$cfg" in
                simple|central) failed=true; wait "$sched_pid"
                    log "$cfg: ejected during the run: $ejected" ;;
                *) fail "$cfg: scheduler left during the run: $ejected" ;;
            esac
        fi
        wait_for 60 state_is disabled || fail "$cfg: sched_ext still $(cat /sys/kernel/sched_ext/state)"
        scx=$(sched_stats "$cfg")
    fi
    log "$wl run $run: $cfg: $measure $result"
    emit "$kind" "{\"workload\": \"$wl\", \"config\": \"$cfg\", \"run\": $run, \"position\": ${pos:-0}, \"attach_tries\": ${attach_tries:-0}, \"ops\": $ops, \"failed\": $failed, \"ejected\": $ejected, \"measure\": $measure, \"result\": ${result:-null}, \"scx\": $scx}"
}

emit boot "{\"cpus\": $NCPUS, \"domains\": \"$(scx_mlsched --list-domains)\", \"uptime_s\": $(cut -d' ' -f1 /proc/uptime), \"kernel\": \"$(uname -r)\", \"sched_ext\": \"$(cat /sys/kernel/sched_ext/state 2>/dev/null || echo missing)\", \"mode\": \"$mode\"}"
case "$mode" in
    test) plan="synthetic:model synthetic:model1 synthetic:explore synthetic:central $(echo "$workloads" | tr ',' '\n' |
              grep -v '^synthetic$' | sed 's/$/:model/' | tr '\n' ' ')" ;;
    bench|record) plan= ;;
    *) fail "unknown mode $mode" ;;
esac
for wl in $(echo "$workloads" | tr ',' ' '); do
    case "$wl" in
        synthetic|hackbench-[tp][0-9]|stressng|build) ;;
        *) fail "unknown workload $wl" ;;
    esac
done
cfg_list=$(echo "$configs" | tr ',' ' ')
[ "$mode" = test ] && cfg_list="model model1"
[ "$mode" = record ] && cfg_list=
for b in $(for c in $cfg_list; do bundle_of "$c"; done | sort -u); do start_daemon "$b"; done
wait_daemons
emit ready "{\"uptime_s\": $(cut -d' ' -f1 /proc/uptime)}"

if [ "$mode" = test ]; then
    rm -f /tmp/explore.csv
    for p in $plan; do run_one "${p%%:*}" "${p#*:}" 1; done
    emit_file explore /tmp/explore.csv
elif [ "$mode" = record ]; then
    rm -f /tmp/imitate.csv /tmp/explore.csv
    start_recorder
    for wl in $(echo "$workloads" | tr ',' ' '); do
        r=1; while [ $r -le "$runs" ]; do run_one "$wl" eevdf $r; r=$((r + 1)); done
    done
    stop_daemons || fail "mlsched-lite (recorder) exited with an error"
    for wl in $(echo "$workloads" | tr ',' ' '); do
        r=1; while [ $r -le "$runs" ]; do run_one "$wl" explore $r; r=$((r + 1)); done
    done
    emit_file imitate /tmp/imitate.csv
    emit_file explore /tmp/explore.csv
else
    calibrate
    w=0
    for wl in $(echo "$workloads" | tr ',' ' '); do
        w=$((w + 1)) r=1 pos=0
        while [ $r -le "$warmup" ]; do run_one "$wl" eevdf $r warmup; r=$((r + 1)); done
        r=1
        while [ $r -le "$runs" ]; do
            pos=0
            for cfg in $(shuffled "$((seed * 1000003 + w * 1009 + r))" $cfg_list); do
                pos=$((pos + 1))
                run_one "$wl" "$cfg" $r
            done
            r=$((r + 1))
        done
    done
fi

stop_daemons || fail "mlsched-lite exited with an error"
emit done "{\"uptime_s\": $(cut -d' ' -f1 /proc/uptime)}"
