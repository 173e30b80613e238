#!/usr/bin/env bash
# Boots the guest kernel under qemu (TCG) with scx_demo in a busybox initramfs
# and checks the normal and fault modes. One boot runs every case.
#
# Usage: examples/scx-demo/tests/vm-smoke.sh [CASE...]
#   CASE: plain llc stall crash verify degrade slow (default: all)
# Env:
#   KTSTR_KERNEL   bzImage (default /work/shared/kernel/bzImage)
#   SCX_DEMO       scx_demo binary (default: cargo build --release -p scx-demo;
#                  a debug build's -O0 libbpf makes loading slow under TCG)
#   CARGO_TARGET_DIR  used for the default build
#   SMOKE_CPUS     guest vCPUs, even (default 4; split over two LLCs)
#   SMOKE_KEEP=1   keep the work directory
# Exit status 0 when every case passed; prints "N passed, N failed".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
kernel=${KTSTR_KERNEL:-/work/shared/kernel/bzImage}
cpus=${SMOKE_CPUS:-4}
cases=${*:-plain llc stall crash verify degrade slow}

for tool in qemu-system-x86_64 cpio ldd; do
    command -v "$tool" >/dev/null || { echo "vm-smoke: $tool not found" >&2; exit 1; }
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q static ||
    busybox=/bin/busybox
[ -x "$busybox" ] || { echo "vm-smoke: static busybox not found (busybox-static)" >&2; exit 1; }
[ -r "$kernel" ] || { echo "vm-smoke: kernel $kernel not readable" >&2; exit 1; }

if [ -z "${SCX_DEMO:-}" ]; then
    (cd "$repo" && cargo build -q --release -p scx-demo)
    SCX_DEMO=${CARGO_TARGET_DIR:-$repo/target}/release/scx_demo
fi
[ -x "$SCX_DEMO" ] || { echo "vm-smoke: $SCX_DEMO not executable" >&2; exit 1; }

work=$(mktemp -d /tmp/scx-demo-smoke.XXXXXX)
[ "${SMOKE_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc}

cp "$busybox" "$root/bin/busybox"
cp "$SCX_DEMO" "$root/bin/scx_demo"
# Shared libraries at their host paths, so the host's loader path works.
ldd "$SCX_DEMO" | awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(/ { print $1 }' |
    while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmp /tmp

SX=/sys/kernel/sched_ext
now_cs() { awk '{ printf "%d", $1 * 100 }' /proc/uptime; }   # centiseconds
secs() { c=$(( $(now_cs) - $1 )); printf '%d.%02d' $((c / 100)) $((c % 100)); }
result() { echo "SMOKE-RESULT: $*"; }

HOGS=""
start_hogs() {   # $1 = count, $2 = optional cgroup dir
    i=0
    while [ $i -lt "$1" ]; do
        sh -c 'while :; do :; done' &
        [ -n "${2:-}" ] && echo $! >"$2/cgroup.procs"
        HOGS="$HOGS $!"
        i=$((i + 1))
    done
}
stop_hogs() { [ -n "$HOGS" ] && kill $HOGS 2>/dev/null; wait $HOGS 2>/dev/null; HOGS=""; }

wait_state() {   # $1 = state, $2 = tenths of a second, $3 = give up when this pid is gone
    n=0
    while [ "$(cat $SX/state 2>/dev/null)" != "$1" ]; do
        n=$((n + 1)); [ $n -gt "$2" ] && return 1
        [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null && return 1
        sleep 0.1
    done
}

# Runs scx_demo, lets it run $1 seconds, then sends SIG (default INT) if it is
# still alive.
# Sets RC, T (seconds from start to exit), ST (state seen), OPS, LOG.
run_case() {
    name=$1; runfor=$2; shift 2
    wait_state disabled 100 || echo "SMOKE: $name: sched_ext not disabled before start"
    LOG=/tmp/$name.log
    t0=$(now_cs)
    scx_demo "$@" 2>"$LOG" &
    pid=$!
    ST=none; OPS=none
    if wait_state enabled 300 $pid; then ST=enabled; OPS=$(cat $SX/root/ops 2>/dev/null); fi
    # Run for $runfor seconds of guest time (sleep granularity suffers under load).
    end=$(( $(now_cs) + runfor * 100 ))
    while [ "$(now_cs)" -lt $end ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
    kill -0 $pid 2>/dev/null && kill -"${SIG:-INT}" $pid
    wait $pid; RC=$?
    T=$(secs "$t0")
    sed "s/^/[$name] /" "$LOG"
}
has() { grep -q "$1" "$LOG"; }
usage() { awk '/^usage_usec/ { print $2 }' "/sys/fs/cgroup/$1/cpu.stat"; }
verdict() {   # $1 = name, $2 = condition (shell code)
    if eval "$2"; then v=ok; else v=FAIL; fi
    result "$1 $v rc=$RC t=${T}s state=$ST ops=$OPS"
}

echo "SMOKE: booted, $(nproc) cpus, state=$(cat $SX/state)"
for c in $(cat /proc/cmdline); do case $c in smoke_cases=*) CASES=$(echo "${c#*=}" | tr , ' ');; esac; done

for c in $CASES; do
    case $c in
    plain)
        start_hogs 6
        run_case plain 3
        stop_hogs
        verdict plain '[ $RC = 0 -a "$ST" = enabled -a "$OPS" = scx_demo ] && has "exit kind=64 "' ;;
    llc)
        start_hogs 6
        SIG=TERM run_case llc 3 --llc --steal
        stop_hogs
        # The VM has two LLCs (one per die); tasks must be stolen across them.
        verdict llc '[ $RC = 0 -a "$ST" = enabled -a "$OPS" = scx_demo ] && has "exit kind=64 " && has "llcs=2 " && ! has "stolen=0 "' ;;
    stall)
        start_hogs 4
        run_case stall 20 --stall-after 1 --timeout-ms 3000
        stop_hogs
        verdict stall '[ $RC = 1 -a "$ST" = enabled ] && has "kind_name=ERROR_STALL"' ;;
    crash)
        start_hogs 4
        run_case crash 15 --crash-after 1
        stop_hogs
        verdict crash '[ $RC = 1 -a "$ST" = enabled ] && has "kind=1025 .*injected crash"' ;;
    verify)
        run_case verify 10 --fail-verify
        verdict verify '[ $RC = 2 -a "$ST" = none ] && has "verifier: " && has "load-failed"' ;;
    degrade)
        # "victim" is created last, so it has the highest cgroup id.
        mkdir -p /sys/fs/cgroup/other; mkdir -p /sys/fs/cgroup/victim
        start_hogs 3 /sys/fs/cgroup/other
        start_hogs 3 /sys/fs/cgroup/victim
        v0=$(usage victim); o0=$(usage other)
        run_case degrade 4 --degrade
        v1=$(usage victim); o1=$(usage other)
        echo "SMOKE: degrade cpu usage during run: victim=$(( (v1 - v0) / 1000 ))ms other=$(( (o1 - o0) / 1000 ))ms"
        verdict degrade '[ $RC = 0 -a "$ST" = enabled ] && has "exit kind=64 " && ! has "degraded=0 " && [ $((v1 - v0)) -lt $((o1 - o0)) ]'
        run_case degrade-path 4 --degrade-cgroup other --slice-us 2000
        stop_hogs
        verdict degrade-path '[ $RC = 0 -a "$ST" = enabled ] && has "exit kind=64 " && ! has "degraded=0 "' ;;
    slow)
        start_hogs 4
        run_case slow 4 --slow-us 2000
        stop_hogs
        verdict slow '[ $RC = 0 -a "$ST" = enabled ] && has "exit kind=64 "' ;;
    *) result "$c FAIL unknown case" ;;
    esac
done
echo "SMOKE: done"
reboot -f
EOF
chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio"

echo "vm-smoke: cases: $cases; kernel $kernel; $cpus vCPUs" >&2
t0=$(date +%s.%N)
set +e
# Two dies = two LLCs (qemu shares L3 per die on this CPU model), so --llc has
# something to split.
timeout 600 qemu-system-x86_64 -accel tcg -M q35 -cpu Skylake-Server \
    -smp "$cpus,sockets=1,dies=2,cores=$((cpus / 2)),threads=1" -m 1024 \
    -nographic -no-reboot -kernel "$kernel" -initrd "$work/initramfs.cpio" \
    -append "console=ttyS0 reboot=t panic=-1 nokaslr rdinit=/init quiet loglevel=4 smoke_cases=$(echo $cases | tr ' ' ,)" \
    </dev/null | tee "$work/console.log" | grep --line-buffered -E '^\[|SMOKE|sched_ext|BUG|panic'
qrc=${PIPESTATUS[0]}
set -e
t1=$(date +%s.%N)
echo "vm-smoke: qemu exited $qrc after $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s" >&2

pass=$(grep -c '^SMOKE-RESULT: .* ok ' "$work/console.log" || true)
fail=$(grep -c '^SMOKE-RESULT: .* FAIL ' "$work/console.log" || true)
grep '^SMOKE-RESULT' "$work/console.log" | tr -d '\r' >&2 || true
expected=$(for c in $cases; do [ "$c" = degrade ] && echo x; echo x; done | wc -l)
if [ $((pass + fail)) -lt "$expected" ]; then
    fail=$((expected - pass))
    echo "vm-smoke: some cases did not report (console: $work/console.log)" >&2
fi
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
