#!/usr/bin/env bash
# Stop the daemons that setup.sh started (slurmd, slurmctld, munged), by their pid files.
# Running jobs are killed with them. The packages and /etc/slurm/slurm.conf stay.
set -uo pipefail

[ "$(id -u)" = 0 ] || { echo "local_cluster/stop.sh: needs root" >&2; exit 1; }

stop() {  # stop NAME PIDFILE
    local pid
    [ -f "$2" ] && pid=$(cat "$2") && kill -0 "$pid" 2>/dev/null || return 0
    echo "local_cluster/stop.sh: stopping $1 (pid $pid)"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "local_cluster/stop.sh: $1 did not stop in 10 s" >&2
    return 1
}

stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop munged /run/munge/munged.pid
