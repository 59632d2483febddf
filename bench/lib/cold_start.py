#!/usr/bin/env python3
"""Timing driver of bench/first-touch and bench/install (and of bench/lib/cold_start.sh, which
both source): time.perf_counter around Popen, so the interpreter's start-up is outside the
timing. Python 3 standard library only.

    cold_start.py mount SPACKFS MIRROR MNT CACHE EXE EXPECT LOG PIDFILE
        Starts `spackfs mount MIRROR MNT --unsigned --cache-dir CACHE` (stdout and stderr to
        LOG, its pid written to PIDFILE so that the caller can kill it if this driver dies),
        waits until the mount answers (MNT/.spack-db exists; polled every ms), runs MNT/EXE,
        reads its first line, lets it finish, runs it again, reads the root's metrics
        (packages materialised, cache hits), unmounts (SIGTERM; the daemon must exit 0).

    cold_start.py install SPACKFS MIRROR ROOT SPEC EXE EXPECT LOG
        Runs `spackfs install MIRROR --unsigned --root ROOT SPEC` (output to LOG), then ROOT/EXE
        as above.

    cold_start.py tar DIR BLOB...
        `gzip -dc BLOB | tar -x -C DIR/K` for the K-th blob, one after another (the
        directories are made before the clock starts).

The program's first line must start with EXPECT, and its second run must print the same.
mount and install print two lines: `READY LINE AGAIN CPU COUNT FIRST-LINE...`, then the
program's second line. READY: seconds from starting spackfs to the mount answering or the
install exiting; LINE: to the program's first line; AGAIN: seconds of the second program run;
CPU: CPU seconds (user + system) spackfs used until the first line (the daemon's, from
/proc) or in all (install); COUNT: `MATERIALISED+HITS` (mount) or packages installed
(install). tar prints `WALL CPU` (CPU: gzip's and tar's). Any failure exits non-zero with a
message naming the log.
"""

import os
import re
import resource
import signal
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid):
    """CPU seconds (utime + stime) of the running process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_program(exe, expect, t0, on_line=None):
    """Run `exe`; return (seconds from t0 to its first line, seconds of a second run, output)."""
    p = subprocess.Popen([exe], stdout=subprocess.PIPE)
    line = p.stdout.readline()
    t_line = time.perf_counter() - t0
    if on_line:
        on_line()
    rest = p.stdout.read()
    if p.wait() != 0 or not line.startswith(expect.encode()):
        sys.exit(f"{exe} failed ({p.returncode}): {line!r}")
    t = time.perf_counter()
    again = subprocess.run([exe], stdout=subprocess.PIPE, check=True)
    t_again = time.perf_counter() - t
    if again.stdout != line + rest:
        sys.exit(f"{exe} printed something else the second time")
    return t_line, t_again, (line + rest).decode()


def mount(spackfs, mirror, mnt, cache, exe, expect, log, pidfile):
    marker = os.path.join(mnt, ".spack-db")
    with open(log, "wb") as lf:
        t0 = time.perf_counter()
        d = subprocess.Popen(
            [spackfs, "mount", mirror, mnt, "--unsigned", "--cache-dir", cache],
            stdout=lf,
            stderr=lf,
        )
    try:
        with open(pidfile, "w") as f:
            f.write(str(d.pid))
        while not os.path.exists(marker):
            if d.poll() is not None:
                sys.exit(f"spackfs mount exited with {d.returncode} (log: {log})")
            if time.perf_counter() - t0 > 60:
                sys.exit(f"{mnt} not mounted after 60 s (log: {log})")
            time.sleep(0.001)
        t_ready = time.perf_counter() - t0
        cpu = []
        t_line, t_again, out = run_program(
            os.path.join(mnt, exe), expect, t0, lambda: cpu.append(proc_cpu(d.pid))
        )
        done = int(os.getxattr(mnt, "user.spackfs.metrics.packages_materialised"))
        hits = int(os.getxattr(mnt, "user.spackfs.metrics.cache_hits"))
        d.send_signal(signal.SIGTERM)
        if d.wait(timeout=30) != 0:
            sys.exit(f"spackfs mount exited with {d.returncode} after SIGTERM (log: {log})")
        os.unlink(pidfile)
    finally:
        if d.poll() is None:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=10)
            except subprocess.TimeoutExpired:
                d.kill()
    return t_ready, t_line, t_again, cpu[0], f"{done}+{hits}", out


def install(spackfs, mirror, root, spec, exe, expect, log):
    with open(log, "wb") as lf:
        c0 = children_cpu()
        t0 = time.perf_counter()
        r = subprocess.run(
            [spackfs, "install", mirror, "--unsigned", "--root", root, spec],
            stdout=lf,
            stderr=lf,
        )
        t_ready = time.perf_counter() - t0
        cpu = children_cpu() - c0
    if r.returncode != 0:
        sys.exit(f"spackfs install failed ({r.returncode}, log: {log})")
    t_line, t_again, out = run_program(os.path.join(root, exe), expect, t0)
    with open(log, "rb") as f:
        m = re.search(rb"installed (\d+) package", f.read())
    return t_ready, t_line, t_again, cpu, m.group(1).decode() if m else "?", out


def tar(dest, blobs):
    for k in range(len(blobs)):
        os.makedirs(os.path.join(dest, str(k)))
    script = 'set -eo pipefail; d=$1; shift; k=0; for b; do gzip -dc "$b" | tar -x -C "$d/$k"; k=$((k + 1)); done'
    c0 = children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "-c", script, "tar", dest, *blobs])
    wall = time.perf_counter() - t0
    cpu = children_cpu() - c0
    if r.returncode != 0:
        sys.exit(f"gzip -dc | tar -x failed ({r.returncode})")
    print(f"{wall:.4f} {cpu:.3f}")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "tar":
        tar(args[0], args[1:])
        return
    if mode == "mount":
        r = mount(*args[:8])
    elif mode == "install":
        r = install(*args[:7])
    else:
        sys.exit(f"unknown mode {mode}")
    t_ready, t_line, t_again, cpu, count, out = r
    first, _, second = out.partition("\n")
    print(f"{t_ready:.4f} {t_line:.4f} {t_again:.4f} {cpu:.3f} {count} {first}")
    print(second.strip())


if __name__ == "__main__":
    main()
