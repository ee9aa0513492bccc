#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start.sh started: cancel its jobs, then
# end slurmd, slurmctld and munged by the PIDs it recorded (never by name:
# other SLURM daemons on the machine are not ours). Safe to call twice.
set -uo pipefail

dir="${JIBJIB_SLURM_DIR:-/tmp/jibjib-slurm}"
say() { echo "slurm: $*" >&2; }

if [ ! -s "$dir/pids" ]; then
    say "nothing to stop ($dir/pids is missing)"
    exit 0
fi

# Cancel first: with proctrack/linuxproc a job's processes would outlive slurmd.
if timeout 10 squeue -h -o %i 2>/dev/null | grep -q .; then
    timeout 10 scancel --full --quiet --partition=cpu,gpu 2>/dev/null || true
    for _ in $(seq 15); do
        timeout 10 squeue -h -t RUNNING,COMPLETING,PENDING -o %i 2>/dev/null | grep -q . || break
        sleep 1
    done
fi

# Reverse start order: slurmd, slurmctld, then munged, which both still use.
for name in slurmd slurmctld munged; do
    pid="$(awk -v n="$name" '$1 == n { print $2 }' "$dir/pids")"
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (PID $pid) ignored TERM for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name (PID $pid)"
done
mv "$dir/pids" "$dir/pids.stopped"
# Leave no configuration behind that points at daemons which are gone (only
# files start.sh wrote for this run directory).
for name in slurm.conf gres.conf; do
    if grep -qxF "# run dir: $dir" "/etc/slurm/$name" 2>/dev/null; then
        rm -f "/etc/slurm/$name"
    fi
done
