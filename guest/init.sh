#!/bin/busybox sh
# /init of the mlsched guest: mount the kernel file systems, run the scenario
# that the kernel command line names (/opt/mlsched/run.sh), power off.
# Console (kernel and scripts) is ttyS0; machine-readable results go to ttyS1.
/bin/busybox --install -s /bin
export PATH=/bin:/opt/mlsched:/usr/local/bin:/usr/bin
export PYTHONHOME=/usr/local PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/local/lib

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf

echo "mlsched guest: $(nproc) CPUs, kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s"
sh /opt/mlsched/run.sh 3>/dev/ttyS1
echo "mlsched guest: run.sh exited $?, powering off"
sync
poweroff -f
