#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and trying the SLURM profile:
#   tools/slurm_cluster.sh start DIR   # writes /etc/slurm/slurm.conf (state, logs, pids in DIR),
#                                      # starts munged (if not running), slurmctld and slurmd
#   tools/slurm_cluster.sh stop DIR    # stops the daemons it started, removes the slurm.conf it wrote
# Needs root and Debian's slurm-wlm and munge (tools/setup.sh installs them). No accounting database:
# run snakemake with --slurm-no-account --slurm-status-command squeue.
# The config goes to the default path, not to $SLURM_CONF: the executor plugin's job step drops
# SLURM_* variables before its inner srun, so jobs only find the config where every tool looks.
# An existing /etc/slurm/slurm.conf that this script did not write is never touched.
set -euo pipefail
cmd=${1:?usage: $0 start|stop DIR}
dir=$(mkdir -p "${2:?usage: $0 start|stop DIR}" && cd "$2" && pwd)
conf=/etc/slurm/slurm.conf
marker="# written by cvaudit tools/slurm_cluster.sh"

stop() {
  for d in slurmd slurmctld munged; do
    if [ -f "$dir/$d.pid" ]; then
      pid=$(cat "$dir/$d.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/$d.pid"
    fi
  done
  if [ -f "$conf" ] && head -1 "$conf" | grep -qF "$marker"; then rm -f "$conf"; fi
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
for b in munged slurmctld slurmd sbatch squeue; do
  command -v "$b" >/dev/null || { echo "$0: $b is missing: apt-get install slurm-wlm munge (tools/setup.sh does)" >&2; exit 1; }
done
host=$(hostname -s)
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
if [ -f "$conf" ] && ! head -1 "$conf" | grep -qF "$marker"; then
  echo "$0: $conf exists and was not written by this script; not touching a real cluster's config" >&2
  exit 1
fi
mkdir -p "$dir/state" "$dir/spool" /etc/slurm
cat > "$conf" <<CONF
$marker (for $dir)
ClusterName=cvaudit
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # no working munged yet: start one
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- munged
  pgrep -x -n munged > "$dir/munged.pid"
  munge -n | unmunge >/dev/null || { echo "$0: munged does not answer" >&2; stop; exit 1; }
fi
slurmctld
slurmd
for _ in $(seq 60); do
  if timeout 5 sinfo -h -o %t 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
    echo "slurm_cluster: up (node $host, $(nproc) CPUs, ${mem} MB; $conf)"
    exit 0
  fi
  sleep 1
done
echo "slurm_cluster: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
