#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for tests and CI: munge, slurmctld and
# slurmd from Debian's packages, one partition "debug" with this host as its only node,
# every daemon talking over 127.0.0.1.
#
#   sudo examples/slurm/local_cluster/setup.sh     # idempotent: run it as often as you like
#   sinfo; sbatch ...; squeue
#   sudo examples/slurm/local_cluster/stop.sh      # stop the daemons again
#
# What it does, each step only when needed:
#   1. installs munge, slurmctld, slurmd and slurm-client with apt-get when missing;
#   2. writes /etc/slurm/slurm.conf for this host (refusing to touch a slurm.conf that this
#      script did not write: this is a throwaway test cluster, not a site configuration);
#   3. starts munged, slurmctld and slurmd directly (no systemd needed, e.g. in containers);
#   4. waits until the node is idle and ready for jobs.
#
# Jobs run as the submitting user on this machine. There is no accounting database, so use
# `scontrol show job ID` (kept for MinJobAge = 10 minutes after a job ends) instead of sacct.
# Starting the controller discards the jobs of an earlier run (`slurmctld -c`): a leftover
# requeueable test job must not start again behind the next test run's back.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# Written by megatron_ixt examples/slurm/local_cluster/setup.sh"
PACKAGES=(munge slurmctld slurmd slurm-client)
LOG_DIR=/var/log/slurm
WAIT_S=${IXT_SLURM_SETUP_WAIT_S:-60}

say() { echo "local_cluster/setup.sh: $*"; }
die() { echo "local_cluster/setup.sh: error: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "needs Linux (found $(uname -s))"
[ "$(id -u)" = 0 ] || die "needs root: it installs packages and starts system daemons"

# -- 1. packages ----------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' postinst scripts try to start the services through systemd; without
    # systemd that is a harmless no-op, and we start the daemons ourselves below.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- 2. configuration -----------------------------------------------------------------
# SlurmctldHost and NodeName must be this host's short name: slurmd looks itself up by it.
NODE=$(hostname -s)
# CPUs and memory as slurmd itself detects them (one line: NodeName=... CPUs=2 ... RealMemory=M).
HW=$(slurmd -C | head -1)
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
MEM_MB=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
if [ -z "$CPUS" ] || [ -z "$MEM_MB" ]; then die "cannot read CPUs/RealMemory from 'slurmd -C': $HW"; fi

new_conf=$(cat <<EOF
$MARKER
# for one-node tests on localhost. Do not use it for anything else.
ClusterName=ixt-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# Job credentials live 15 s instead of 120. SLURM also holds a requeued job that long
# (Reason=BeginTime) before it may start again, so requeue tests need not wait 2 minutes.
AuthInfo=cred_expire=15
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: they are often unavailable in containers and sandboxes. linuxproc tracks a
# step's processes by parentage, so signals (scancel --signal, --signal=...) reach every
# process of a step, as cgroup tracking does on real clusters.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# The scheduler looks at pending jobs every 2 s (default 60 s): a requeued job becomes
# eligible with no event that would wake the scheduler, and tests wait for it.
SchedulerParameters=sched_interval=2,bf_interval=2
# Cores are the consumable resource; memory is not (jobs need no --mem).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The hardware values below win over what slurmd detects, so the node never drains
# on a small mismatch.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARKER"; then
    die "$CONF exists and was not written by this script; refusing to replace a real configuration"
fi
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" > "$CONF"
    conf_changed=1
    say "wrote $CONF (node $NODE, $CPUS CPUs, $MEM_MB MB)"
fi

# -- 3. daemons -----------------------------------------------------------------------
running() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }  # running PIDFILE

# munge authenticates every message between the SLURM daemons and commands.
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# A changed configuration needs fresh daemons.
if [ "$conf_changed" = 1 ]; then
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if running "$pidfile"; then
            say "restarting $(basename "$pidfile" .pid) for the new configuration"
            kill "$(cat "$pidfile")"
            for _ in $(seq 100); do running "$pidfile" || break; sleep 0.1; done
        fi
    done
fi

if ! running /run/slurmctld.pid; then
    say "starting slurmctld (clearing jobs of earlier runs)"
    slurmctld -c
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"

if ! running /run/slurmd.pid; then
    say "starting slurmd"
    slurmd
fi

# -- 4. wait for the node ---------------------------------------------------------------
deadline=$((SECONDS + WAIT_S))
while :; do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            # e.g. "down" after the daemons were killed without a clean shutdown
            scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    if [ $SECONDS -ge $deadline ]; then
        scontrol show node "$NODE" >&2 || true
        die "node $NODE is '$state', not ready after ${WAIT_S}s (see $LOG_DIR/slurmd.log)"
    fi
    sleep 0.5
done
say "ready: partition debug, node $NODE ($state), $CPUS CPUs"
