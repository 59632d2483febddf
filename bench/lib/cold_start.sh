# shellcheck shell=bash
# The cold-start comparison shared by bench/first-touch and bench/install (sourced by both;
# issue 13): for every shape (a closure of packages and the program that needs it) and every
# file system, the medians of $BENCH_RUNS runs, interleaved (run 1 of everything, then run 2,
# ...; the three take turns going first), of
#   (a) first touch: `spackfs mount MIRROR MNT --unsigned --cache-dir FRESH` started, the
#       mount waited for (MNT/.spack-db exists; polled every ms), the program run from
#       MNT; wall time from starting the daemon to the program's first line;
#   (b) install: `spackfs install MIRROR --unsigned --root FRESH PKG` (default --jobs), then
#       the program run from the root; wall time from starting the install to the first line;
#   (c) baseline: `gzip -dc BLOB | tar -x -C DIR` of the closure's tarballs, one after another,
#       each into a fresh directory;
# and the ratios issue 13 sets aims for: (a)/(b) <= 1.1, (c)/(a) >= 2, (c)/(b) >= 2.5.
#
# Shapes ($BENCH_SHAPES, default "read stack"; empty: none, the comparison is skipped):
#   read   app and its ten link dependencies dep0..dep9 from the mirror of bench/read and
#          bench/first-touch (examples/bench_read_mirror.rs; in $BENCH_READ_DIR, default
#          /dev/shm/spackfs-bench-read; BENCH_BIG_MIB and BENCH_SMALL_FILES as in bench/read):
#          11 packages of ~4 MB libraries; the program is app's bin/app;
#   stack  a Python 3.11 stack (examples/bench_stack_mirror.rs; in $BENCH_STACK_DIR, default
#          /dev/shm/spackfs-bench-stack; BENCH_PYTHON_MB (100) and BENCH_PY_FILES (3020) are
#          passed on as --python-mb and --py-files): python, gcc-runtime, zlib, bzip2, xz,
#          ~127 MB unpacked, ~3,700 entries, python ~80 % of it; the program is bin/python3.
# File systems ($BENCH_FS, default "tmpfs disk"): the cache dir, the install root and the tar
# target are on the file system measured, the mount point next to them:
#   tmpfs  $BENCH_TMPFS_DIR (default /dev/shm/spackfs-bench-cold);
#   disk   $BENCH_DISK_DIR (default /var/tmp/spackfs-bench-disk: the root file system, where
#          the default cache dir /var/cache/spackfs lives). Each run's output is removed and
#          the file system synced (sync -f) before the next measurement, outside the timing.
# The mirrors' blobs stay on tmpfs (read from the page cache every run); the mirrors are
# generated when missing or stale (a stamp of the parameters and the generator's source;
# BENCH_REGENERATE=1 forces it). Timing by bench/lib/cold_start.py. Logs of every run go to
# $BENCH_TMPFS_DIR/logs (kept); everything else is removed at the end, on failure too.
#
# The sourcing script defines: repo, target_dir, spackfs (the built binary), runs, die();
# it builds `cold_start_examples` with its cargo build, then calls cold_start_prepare (after
# the build), cold_start_measure, cold_start_report, and cold_start_cleanup from its EXIT
# trap.

cs_shapes=${BENCH_SHAPES-read stack}
cs_fss=${BENCH_FS-tmpfs disk}
cs_read_dir=${BENCH_READ_DIR:-/dev/shm/spackfs-bench-read}
cs_stack_dir=${BENCH_STACK_DIR:-/dev/shm/spackfs-bench-stack}
cs_big_mib=${BENCH_BIG_MIB:-1024}
cs_small_files=${BENCH_SMALL_FILES:-10000}
cs_python_mb=${BENCH_PYTHON_MB:-100}
cs_py_files=${BENCH_PY_FILES:-3020}
cs_driver=$repo/bench/lib/cold_start.py
declare -A cs_base=([tmpfs]=${BENCH_TMPFS_DIR:-/dev/shm/spackfs-bench-cold} [disk]=${BENCH_DISK_DIR:-/var/tmp/spackfs-bench-disk})
cs_logs=${cs_base[tmpfs]}/logs
for cs_s in $cs_shapes; do [[ $cs_s == read || $cs_s == stack ]] || die "BENCH_SHAPES: unknown shape '$cs_s' (read, stack)"; done
for cs_s in $cs_fss; do [[ $cs_s == tmpfs || $cs_s == disk ]] || die "BENCH_FS: unknown file system '$cs_s' (tmpfs, disk)"; done
[[ -z $cs_shapes || -n $cs_fss ]] || die "BENCH_FS is empty"

# Per shape: mirror, spec, prefix (relative to the root), program, expected first line,
# closure size, tarballs (newline-separated), unpacked bytes, compressed bytes, entries,
# the program's first line. Per measurement (shape,fs,mode): the runs' times.
declare -A cs_mirror cs_spec cs_rel cs_exe cs_expect cs_npkgs cs_blobs cs_unpacked cs_compressed cs_entries cs_said cs_fstype
declare -A cs_ready cs_line cs_cpu

# The examples the shapes need, as cargo arguments.
cold_start_examples=()
if [[ " $cs_shapes " == *" read "* ]]; then cold_start_examples+=(--example bench_read_mirror); fi
if [[ " $cs_shapes " == *" stack "* ]]; then cold_start_examples+=(--example bench_stack_mirror); fi

# cs_generate DIR STAMP GENERATOR ARGS...: (re)generates DIR/mirror unless DIR/mirror.stamp
# says it was made with these parameters by this generator.
declare -A cs_generated
cs_generate() {
    local dir=$1 want=$2 gen=$3 TIMEFORMAT='    generation took %1R s wall'; shift 3
    [[ -z ${cs_generated[$dir]:-} ]] || return 0   # already made or checked in this run
    cs_generated[$dir]=1
    mkdir -p "$dir"
    if [[ ${BENCH_REGENERATE:-0} == 1 || ! -f $dir/mirror.stamp || "$(cat "$dir/mirror.stamp")" != "$want" \
          || ! -f $dir/mirror/v3/manifests/index/index.manifest.json ]]; then
        rm -f "$dir/mirror.stamp"
        echo "==> generating the mirror in $dir"
        time "$target_dir/release/examples/$gen" "$dir" "$@"
        echo "$want" >"$dir/mirror.stamp"
    else
        echo "==> reusing the mirror at $dir/mirror ($want)"
    fi
}

# cs_source_hash EXAMPLE: what the mirror's bytes depend on (the generator and its helpers).
cs_source_hash() { cat "$repo/examples/$1.rs" "$repo/examples/common/mod.rs" | sha256sum | cut -c1-16; }

# The mirror of bench/read and bench/first-touch (the stamp is the one bench/read writes).
cold_start_read_mirror() {
    cs_generate "$1" "big_mib=$cs_big_mib small_files=$cs_small_files generator=$(cs_source_hash bench_read_mirror)" \
        bench_read_mirror --big-mib "$cs_big_mib" --small-files "$cs_small_files"
}

cold_start_stack_mirror() {
    cs_generate "$1" "python_mb=$cs_python_mb py_files=$cs_py_files generator=$(cs_source_hash bench_stack_mirror)" \
        bench_stack_mirror --python-mb "$cs_python_mb" --py-files "$cs_py_files"
}

# cs_tarball MIRROR NAME: the tarball of package NAME (the tarball record is listed first in
# its spec manifest).
cs_tarball() {
    local m sum
    m=$(ls "$1"/v3/manifests/spec/"$2"/*.spec.manifest.json) || die "no spec manifest for $2 in $1"
    [[ $(wc -l <<<"$m") == 1 ]] || die "several spec manifests for $2 in $1"
    sum=$(grep -m1 '"checksum"' "$m" | sed 's/.*"checksum": *"\([0-9a-f]*\)".*/\1/')
    [[ $sum =~ ^[0-9a-f]{64}$ ]] || die "no tarball checksum in $m"
    echo "$1/blobs/sha256/${sum:0:2}/$sum"
}

# cs_shape SHAPE DIR SPEC EXE EXPECT NAMES...: records a shape whose closure is NAMES.
cs_shape() {
    local shape=$1 dir=$2 spec=$3 exe=$4 expect=$5 name rel stats b; shift 5
    local mirror=$dir/mirror
    rel=$("$spackfs" ls "$mirror" --unsigned --root /R 2>/dev/null | awk -v n="$spec" '$1 == n {print $4}')
    rel=${rel#/R/}
    [[ -n $rel ]] || die "no package $spec in $mirror"
    cs_mirror[$shape]=$mirror cs_spec[$shape]=$spec cs_rel[$shape]=$rel cs_exe[$shape]=$rel/$exe
    cs_expect[$shape]=$expect cs_npkgs[$shape]=$# cs_blobs[$shape]=
    for name; do cs_blobs[$shape]+="$(cs_tarball "$mirror" "$name")"$'\n'; done
    # Unpacked bytes (inflated tar streams) and entries under the prefixes, measured once.
    stats=$dir/$shape.closure-stats
    if [[ ! -s $stats || $stats -ot $dir/mirror.stamp ]]; then
        local bytes=0 entries=0
        while read -r b; do
            [[ -n $b ]] || continue
            bytes=$(( bytes + $(gzip -dc "$b" | wc -c) ))
            entries=$(( entries + $(gzip -dc "$b" | tar -t | grep -c 'linux-x86_64/[^/]*/.') ))
        done <<<"${cs_blobs[$shape]}"
        echo "$bytes $entries" >"$stats"
    fi
    read -r cs_unpacked[$shape] cs_entries[$shape] <"$stats"
    cs_compressed[$shape]=0
    while read -r b; do
        if [[ -n $b ]]; then cs_compressed[$shape]=$(( cs_compressed[$shape] + $(stat -c %s "$b") )); fi
    done <<<"${cs_blobs[$shape]}"
}

# Generates the mirrors, records the shapes, checks and prepares the file systems.
cold_start_prepare() {
    [[ -n $cs_shapes ]] || return 0
    local names fs shape
    mkdir -p "${cs_base[tmpfs]}"
    for fs in $cs_fss; do mkdir -p "${cs_base[$fs]}"; cs_base[$fs]=$(cd "${cs_base[$fs]}" && pwd); done
    cs_logs=$(cd "${cs_base[tmpfs]}" && pwd)/logs
    for shape in $cs_shapes; do
        case $shape in
            read)
                mkdir -p "$cs_read_dir" && cs_read_dir=$(cd "$cs_read_dir" && pwd)
                cold_start_read_mirror "$cs_read_dir"
                mapfile -t names < <("$spackfs" ls "$cs_read_dir/mirror" --unsigned 2>/dev/null | awk '$1 ~ /^dep[0-9]+$/ {print $1}')
                (( ${#names[@]} > 0 )) || die "no dependencies dep* in $cs_read_dir/mirror"
                cs_shape read "$cs_read_dir" app bin/app "app: ${#names[@]} libraries loaded" app "${names[@]}" ;;
            stack)
                mkdir -p "$cs_stack_dir" && cs_stack_dir=$(cd "$cs_stack_dir" && pwd)
                cold_start_stack_mirror "$cs_stack_dir"
                mapfile -t names < <("$spackfs" ls "$cs_stack_dir/mirror" --unsigned 2>/dev/null | awk 'NF {print $1}')
                cs_shape stack "$cs_stack_dir" python bin/python3 "python3: " "${names[@]}" ;;
        esac
    done
    for fs in $cs_fss; do
        cs_unmount "${cs_base[$fs]}/mnt"
        rm -rf "${cs_base[$fs]}"/{mnt,cache,root,tar,daemon.pid}
        mkdir -p "${cs_base[$fs]}/mnt"
        cs_fstype[$fs]=$(df -T "${cs_base[$fs]}" | awk 'NR == 2 {print ($1 == $2) ? $2 : $2 " on " $1}')
        case $fs in
            tmpfs) [[ ${cs_fstype[$fs]} == tmpfs* ]] || echo "bench: warning: ${cs_base[$fs]} is not on tmpfs (${cs_fstype[$fs]})" >&2 ;;
            disk) [[ ${cs_fstype[$fs]} != tmpfs* ]] || echo "bench: warning: ${cs_base[$fs]} is on tmpfs, not a disk" >&2 ;;
        esac
    done
    rm -rf "$cs_logs"
    mkdir -p "$cs_logs"
}

# cs_unmount DIR: unmounts DIR if something is mounted there (a stale FUSE mount included,
# which stat cannot look at).
cs_unmount() {
    if mountpoint -q "$1" 2>/dev/null || awk -v m="$1" '$2 == m {f = 1} END {exit !f}' /proc/mounts; then
        umount -l "$1" 2>/dev/null || true
    fi
}

# Removes what the measurements leave: kills a daemon left by a failed driver, unmounts,
# removes the cache dirs, roots and tar targets (the logs stay).
cold_start_cleanup() {
    local fs base pid i
    for fs in $cs_fss; do
        base=${cs_base[$fs]}
        if [[ -s $base/daemon.pid ]]; then
            pid=$(cat "$base/daemon.pid")
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true
                for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        cs_unmount "$base/mnt"
        rm -rf "$base"/{cache,root,tar,daemon.pid}
        rmdir "$base/mnt" 2>/dev/null || true
        [[ $fs == tmpfs ]] || rmdir "$base" 2>/dev/null || true
    done
}

# cs_fresh FS: removes the previous measurement's output (and, on disk, syncs it away).
cs_fresh() {
    local base=${cs_base[$1]}
    rm -rf "$base"/{cache,root,tar}
    if [[ $1 == disk ]]; then sync -f "$base"; fi
}

# cs_one SHAPE FS MODE RUN: one measurement; the first run's output is checked.
cs_one() {
    local shape=$1 fs=$2 mode=$3 run=$4 out r l a c n first second expect where k
    local base=${cs_base[$fs]} log=$cs_logs/$shape-$fs-$mode-$run.log
    k=$shape,$fs,$mode
    cs_fresh "$fs"
    case $mode in
        mount)
            out=$(python3 "$cs_driver" mount "$spackfs" "${cs_mirror[$shape]}" "$base/mnt" "$base/cache" \
                "${cs_exe[$shape]}" "${cs_expect[$shape]}" "$log" "$base/daemon.pid") \
                || die "$shape on $fs: the mount measurement failed (log: $log)"
            expect="${cs_npkgs[$shape]}+0" where=$base/mnt ;;
        install)
            out=$(python3 "$cs_driver" install "$spackfs" "${cs_mirror[$shape]}" "$base/root" "${cs_spec[$shape]}" \
                "${cs_exe[$shape]}" "${cs_expect[$shape]}" "$log") \
                || die "$shape on $fs: the install measurement failed (log: $log)"
            expect=${cs_npkgs[$shape]} where=$base/root ;;
        tar)
            local blobs
            mapfile -t blobs < <(awk 'NF' <<<"${cs_blobs[$shape]}")
            out=$(python3 "$cs_driver" tar "$base/tar" "${blobs[@]}") || die "$shape on $fs: gzip -dc | tar -x failed"
            read -r l c <<<"$out"
            cs_line[$k]+="$l " cs_cpu[$k]+="$c "
            cs_fresh "$fs"
            return 0 ;;
    esac
    { read -r r l a c n first; read -r second; } <<<"$out"   # a: the second program run, unused
    [[ $n == "$expect" ]] || die "$shape on $fs, $mode run $run: packages materialised+cache hits (mount) or installed: $n, expected $expect (log: $log)"
    [[ $first == "${cs_expect[$shape]}"* ]] || die "$shape on $fs, $mode run $run: the program printed '$first'"
    [[ $second == *"$where/${cs_rel[$shape]}" ]] || die "$shape on $fs, $mode run $run: the program does not report its prefix under $where: $second"
    cs_said[$shape]=$first
    cs_ready[$k]+="$r " cs_line[$k]+="$l " cs_cpu[$k]+="$c "
    cs_fresh "$fs"
}

cold_start_measure() {
    [[ -n $cs_shapes ]] || return 0
    local run fs shape mode modes
    cs_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "==> cold start: $runs runs of (a) mount, (b) install, (c) gzip | tar for each of [$cs_shapes] on each of [$cs_fss], interleaved"
    for run in $(seq 1 "$runs"); do
        # The three modes take turns going first (run 1: a b c, run 2: b c a, run 3: c a b,
        # ...), so that none always follows another's deletions.
        modes=(mount install tar)
        modes=("${modes[@]:$(( (run - 1) % 3 ))}" "${modes[@]:0:$(( (run - 1) % 3 ))}")
        for fs in $cs_fss; do
            for shape in $cs_shapes; do
                for mode in "${modes[@]}"; do cs_one "$shape" "$fs" "$mode" "$run"; done
            done
        done
        printf '    run %d/%d done\n' "$run" "$runs"
    done
    cs_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
}

cs_median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# cs_split LOG: spackfs's own per-package timings in LOG (mount: a "NAME: Successfully
# materialised" line, then the timings; install: "[k/n] NAME@...: installed at ... (timings)"):
# the largest package's extract, relocate and total seconds, its name, the sum of totals.
cs_split() {
    awk '
        /Successfully materialised/ { for (i = 1; i <= NF; i++) if ($i == "Successfully") { name = $(i - 1); sub(/:$/, "", name) } }
        /: installed at / { name = $2; sub(/@.*/, "", name) }
        /Total: / {
            for (i = 1; i <= NF; i++) {
                v = $(i + 1); sub(/s[.)]*$/, "", v)
                if ($i == "Extract:") e = v; if ($i == "Relocate:") r = v; if ($i == "Total:") t = v
            }
            sum += t
            if (t > bt) { bt = t; be = e; br = r; bn = name }
        }
        END { printf "%s %.3f %.3f %.3f %.3f\n", bn, be, br, bt, sum }' "$1"
}

cold_start_report() {
    [[ -n $cs_shapes ]] || return 0
    local shape fs mode k a b c name e r t sum
    echo
    echo "cold start (issue 13): first touch vs eager install vs gzip -dc | tar -x of the same tarballs ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r))"
    for shape in $cs_shapes; do
        printf '  %-6s %s: %d packages, %.1f MB unpacked (inflated tar streams), %.1f MB compressed, %d entries; %s said: %s\n' \
            "$shape" "${cs_spec[$shape]}'s closure in ${cs_mirror[$shape]}" "${cs_npkgs[$shape]}" \
            "$(awk -v b="${cs_unpacked[$shape]}" 'BEGIN {print b / 1e6}')" "$(awk -v b="${cs_compressed[$shape]}" 'BEGIN {print b / 1e6}')" \
            "${cs_entries[$shape]}" "${cs_exe[$shape]##*/}" "${cs_said[$shape]}"
    done
    for fs in $cs_fss; do
        printf '  %-6s cache dir, install root and tar target under %s (%s); mirrors on tmpfs (page cache)\n' "$fs" "${cs_base[$fs]}" "${cs_fstype[$fs]}"
    done
    echo "  timing:    wall seconds to the program's first line ((a) from starting the daemon, (b) from starting the install), (c) to the last tar's exit; median of $runs; fresh dirs per run"
    echo "  load avg:  $cs_load_before before, $cs_load_after after (other processes share the CPUs; compare runs with care)"
    echo
    printf '  %-6s %-6s %13s %11s %11s   %-12s %-12s %s\n' shape fs "(a) 1st touch" "(b) install" "(c) gz|tar" "a/b (<=1.1)" "c/a (>=2)" "c/b (>=2.5)"
    for fs in $cs_fss; do
        for shape in $cs_shapes; do
            k=$shape,$fs
            a=$(cs_median "${cs_line[$k,mount]}") b=$(cs_median "${cs_line[$k,install]}") c=$(cs_median "${cs_line[$k,tar]}")
            awk -v s="$shape" -v f="$fs" -v a="$a" -v b="$b" -v c="$c" 'BEGIN {
                ab = a / b; ca = c / a; cb = c / b
                printf "  %-6s %-6s %13.3f %11.3f %11.3f   %-12s %-12s %s\n", s, f, a, b, c,
                    sprintf("%.2f %s", ab, ab <= 1.1 ? "ok" : "MISS"), sprintf("%.2f %s", ca, ca >= 2 ? "ok" : "MISS"),
                    sprintf("%.2f %s", cb, cb >= 2.5 ? "ok" : "MISS") }'
        done
    done
    echo
    echo "  runs (wall s; cpu s: spackfs until the first line (a, the daemon) or in all (b), gzip + tar (c)):"
    for fs in $cs_fss; do
        for shape in $cs_shapes; do
            k=$shape,$fs
            printf '  %-6s %-6s (a) %s | cpu %s | mount answered %s\n' "$shape" "$fs" "${cs_line[$k,mount]% }" "${cs_cpu[$k,mount]% }" "${cs_ready[$k,mount]% }"
            printf '  %-6s %-6s (b) %s | cpu %s | install exited %s\n' "" "" "${cs_line[$k,install]% }" "${cs_cpu[$k,install]% }" "${cs_ready[$k,install]% }"
            printf '  %-6s %-6s (c) %s | cpu %s\n' "" "" "${cs_line[$k,tar]% }" "${cs_cpu[$k,tar]% }"
        done
    done
    echo
    echo "  where the time goes (run $runs, spackfs's own timings of the largest package; sum: of all packages' totals):"
    for fs in $cs_fss; do
        for shape in $cs_shapes; do
            for mode in mount install; do
                read -r name e r t sum < <(cs_split "$cs_logs/$shape-$fs-$mode-$runs.log")
                printf '  %-6s %-6s %-7s %-12s extract %6.3f  relocate %6.3f  total %6.3f   sum %6.3f   first line at %s\n' \
                    "$shape" "$fs" "$mode" "$name" "$e" "$r" "$t" "$sum" "$(awk -v x="${cs_line[$shape,$fs,$mode]}" 'BEGIN {n = split(x, v, " "); print v[n]}')"
            done
        done
    done
    echo "  logs: $cs_logs"
}
