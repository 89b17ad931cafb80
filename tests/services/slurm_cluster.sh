#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `slurm` tests (Debian/Ubuntu slurm-wlm + munge).
#
#   tests/services/slurm_cluster.sh start    # installs the packages if missing (apt), starts munged,
#                                            # slurmctld and slurmd; prints `export SLURM_CONF=...`
#   tests/services/slurm_cluster.sh status   # exit 0 when `sinfo` answers
#   tests/services/slurm_cluster.sh stop     # stops only the daemons this script started
#
# Idempotent: `start` on a running cluster only prints SLURM_CONF. Every client needs SLURM_CONF exported.
# State, spool, logs and pid files live in $SLURM_TEST_DIR (default /tmp/sft_exp_slurm). Two partitions:
# `low` (default) and `high`, whose jobs preempt low's (requeued, with SIGUSR2/SIGTERM first).
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/sft_exp_slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || { echo "slurm_cluster: no slurmctld and no apt-get to install it" >&2; exit 3; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 8 / 10 / 1024 ))
    mkdir -p "$DIR"/{state,spool,log,munge}
    cat >"$CONF" <<EOF
ClusterName=sftexp
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
ReturnToService=2
JobRequeue=1
# cred_expire=10 above: the default (120 s) makes a requeued job wait two minutes to start again.
KillWait=10
MinJobAge=300
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=low Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes=$HOST MaxTime=INFINITE State=UP PriorityTier=10
EOF
}

running() { SLURM_CONF=$CONF timeout 5 sinfo -h >/dev/null 2>&1; }

start() {
    install_packages
    if [ -f "$CONF" ] && running; then echo "export SLURM_CONF=$CONF"; return; fi
    write_config
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge
        [ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
        munged --force --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
            --seed-file="$DIR/munge/seed"
        echo munged >"$DIR/started"
    fi
    SLURM_CONF=$CONF slurmctld -c -i -f "$CONF"
    SLURM_CONF=$CONF slurmd -N "$HOST" -f "$CONF"
    echo slurmctld >>"$DIR/started"; echo slurmd >>"$DIR/started"
    for _ in $(seq 1 30); do
        if running && SLURM_CONF=$CONF sinfo -h -o %T | grep -qv -e unk -e down; then
            echo "export SLURM_CONF=$CONF"; return
        fi
        sleep 1
    done
    echo "slurm_cluster: the cluster did not come up; see $DIR/log" >&2
    exit 1
}

stop_pid() {  # the daemon whose pid file this script's config named
    local file=$1
    [ -f "$file" ] || return 0
    local pid; pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$file"
}

stop() {
    [ -f "$DIR/started" ] || { echo "slurm_cluster: nothing started here"; return; }
    grep -qx slurmd "$DIR/started" && stop_pid "$DIR/slurmd.pid"
    grep -qx slurmctld "$DIR/started" && stop_pid "$DIR/slurmctld.pid"
    grep -qx munged "$DIR/started" && stop_pid "$DIR/munge/munged.pid"
    rm -f "$DIR/started"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) [ -f "$CONF" ] && running ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
