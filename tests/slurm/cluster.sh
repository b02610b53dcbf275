#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the cluster tests (tests/slurm/):
# Debian's slurm-wlm and munge, one slurmctld and two slurmd (`slurmd -N n1`, `-N n2`) that
# listen on 127.0.0.1:17001-17002, partition `debug`, 1 CPU per node. Idempotent: a cluster
# already up is left as it is. Needs root (apt-get, /etc/hosts, the daemons).
#   bash tests/slurm/cluster.sh          start it (installing the packages when missing)
#   bash tests/slurm/cluster.sh stop     stop the daemons
# Then: sinfo; srun -N 2 -n 2 hostname; facediff-train -m launcher=slurm_ddp ...
set -euo pipefail
STATE=/var/lib/facediff-slurm
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

if [ "${1:-start}" = stop ]; then
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge (Debian's packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

for n in n1 n2; do  # the two node names resolve to this machine
  grep -qE "^127\.0\.0\.1[[:space:]].*\b$n\b" /etc/hosts || echo "127.0.0.1 $n" >> /etc/hosts
done

mkdir -p /etc/slurm "$STATE"/{ctld,n1,n2} /var/log/slurm /run/munge /var/log/munge
chown -R slurm:slurm "$STATE" /var/log/slurm
cat > "$CONF.new" <<CONF
ClusterName=facediff
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
MpiDefault=none
NodeName=n[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[17001-17002] CPUs=1 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
changed=1
if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then changed=0; rm "$CONF.new"; else mv "$CONF.new" "$CONF"; fi
rm -f /etc/slurm/cgroup.conf  # no cgroup plugin: proctrack/linuxproc, task/none

if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

if [ "$changed" = 1 ]; then  # a new config: restart what runs
  pkill -x slurmd || true; pkill -x slurmctld || true; sleep 1
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
for n in n1 n2; do
  pgrep -f "slurmd -N $n" >/dev/null || /usr/sbin/slurmd -N "$n"
done

for _ in $(seq 60); do  # both nodes idle: ready
  state=$(sinfo -h -N -p debug -o "%N %t" 2>/dev/null || true)
  if [ "$(echo "$state" | grep -c ' idle$')" = 2 ]; then
    echo "SLURM cluster up: $(echo "$state" | tr '\n' ' ')"
    exit 0
  fi
  scontrol update nodename=n[1-2] state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "SLURM cluster did not come up; sinfo says: $state" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-n1.log >&2 || true
exit 1
