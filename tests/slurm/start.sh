#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for the SLURM test:
# installs Debian's slurm-wlm and munge if missing, then runs munged,
# slurmctld and slurmd by hand (no systemd), recording their PIDs, and waits
# until the node is idle. Needs root. Stop it with tests/slurm/stop.sh.
#
# The generated slurm.conf and gres.conf go to /etc/slurm, where every SLURM
# command looks by default. (SLURM_CONF elsewhere is not enough: Snakemake's
# jobstep plugin clears SLURM_* variables before its nested srun, so srun
# inside a job would find no configuration.) An existing slurm.conf that this
# script did not write is never replaced. Everything else lives in
# $JIBJIB_SLURM_DIR (default /tmp/jibjib-slurm): a munge key, state, logs and
# `pids`. Each wait has a time limit, so this cannot hang.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
dir="${JIBJIB_SLURM_DIR:-/tmp/jibjib-slurm}"
ctld_port="${JIBJIB_SLURM_PORT:-6817}"
slurmd_port=$((ctld_port + 1))
wait_seconds="${JIBJIB_SLURM_WAIT:-60}"

say() { echo "slurm: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and runs slurmd)"
case "$dir" in /*/*) ;; *) die "JIBJIB_SLURM_DIR=$dir: give a directory below a top-level one (it is emptied)";; esac

if [ -s "$dir/pids" ]; then
    while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            die "$name (PID $pid) from an earlier start is still running; run tests/slurm/stop.sh first"
        fi
    done < "$dir/pids"
fi

start=$SECONDS
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >&2
    # The packages' own init scripts are not used (there is no systemd; on
    # Debian images policy-rc.d usually forbids starting them anyway).
    timeout 600 apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
    say "installed in $((SECONDS - start)) s"
fi

etc=/etc/slurm
marker="# written by jibjib tests/slurm/start.sh"
if [ -e "$etc/slurm.conf" ]; then
    grep -qxF "$marker" "$etc/slurm.conf" \
        || die "$etc/slurm.conf exists and is not ours; not touching this machine's SLURM"
    # Another start.sh cluster (another run directory) still answering?
    if timeout 10 scontrol ping >/dev/null 2>&1; then
        die "a cluster started by start.sh is running ($(grep -m1 '^# run dir: ' "$etc/slurm.conf")); stop it with its stop.sh first"
    fi
fi

rm -rf "$dir"
mkdir -p "$dir/state" "$dir/spool" "$etc"
# Only root uses this cluster, and the directory holds the munge key.
chmod 700 "$dir"
host="$(hostname -s)"
for name in slurm.conf gres.conf; do
    { echo "$marker"; echo "# run dir: $dir"
      sed -e "s|@HOST@|$host|g" -e "s|@DIR@|$dir|g" \
          -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" "$here/$name"
    } > "$etc/$name"
done
unset SLURM_CONF

# A fresh key per cluster: nothing outside this run directory trusts it.
head -c 1024 /dev/urandom > "$dir/munge.key"
chmod 400 "$dir/munge.key"

# Each daemon runs in the foreground of its own background process, so $! is
# the daemon's own PID (a forking daemon would hand us a parent that exits).
: > "$dir/pids"
launch() {
    local name="$1"; shift
    nohup "$@" > "$dir/$name.out" 2>&1 < /dev/null &
    echo "$name $!" >> "$dir/pids"
}

wait_for() {  # wait_for <what> <command...>: retry for up to $wait_seconds
    local what="$1"; shift
    local deadline=$((SECONDS + wait_seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "gave up waiting for $what after $wait_seconds s; logs in $dir:"
            tail -n 20 "$dir"/*.out "$dir"/*.log >&2 2>/dev/null || true
            return 1
        fi
        sleep 1
    done
}

# --force: munged refuses a socket that other users could not reach (our
# directory is root-only), and only root talks to it here.
launch munged munged --foreground --force --socket="$dir/munge.socket" \
    --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
munge_works() { munge -n -S "$dir/munge.socket" | unmunge -S "$dir/munge.socket"; }
wait_for munged munge_works

launch slurmctld slurmctld -D
wait_for slurmctld scontrol ping
launch slurmd slurmd -D -N jibjib-node

node_idle() { [ "$(sinfo -h -n jibjib-node -o %T | sort -u)" = idle ]; }
wait_for "the node to become idle" node_idle
say "cluster up in $((SECONDS - start)) s: $(sinfo -h -o '%P %D %T %G' | tr '\n' ' ')"
