#!/usr/bin/env bash
# Tear the lab down; safe to run any number of times, also after a crash.
#
# Stops the hosts by the PIDs up.sh recorded (and any leftover systemd-nspawn
# whose machine name has our prefix, by its PID), then removes only objects
# carrying the prefix: overlay mounts, network namespaces, links, cgroups,
# per-run state. The cached base tree is kept.
set -euo pipefail
# shellcheck source=scripts/lab/common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"
pcm_require_root

if [[ ${1:-} != --locked ]]; then
  exec 8>"$PCM_LOCK"
  flock -w 120 8 || pcm_die "another $PCM_PREFIX lab run holds $PCM_LOCK"
fi

# PIDs of nspawn processes running one of our machines.
our_nspawn_pids() {
  local f pid cmd
  for f in "$PCM_STATE_DIR"/*/nspawn.pid; do
    [[ -f $f ]] && cat "$f"
  done
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}"
    pid="${pid%/cmdline}"
    cmd="$(tr '\0' ' ' <"$f" 2>/dev/null)" || continue
    if [[ $cmd == *systemd-nspawn*" --machine=$PCM_PREFIX-"* ]]; then
      echo "$pid"
    fi
  done
}

pids=()
for pid in $(our_nspawn_pids | sort -u); do
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
  [[ $cmd == *systemd-nspawn*" --machine=$PCM_PREFIX-"* ]] || continue
  kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
done
# A clean poweroff takes 1-3 s; after 15 s, kill what is left.
for _ in $(seq 1 150); do
  alive=0
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && alive=1
  done
  ((alive)) || break
  sleep 0.1
done
for pid in "${pids[@]}"; do
  if kill -0 "$pid" 2>/dev/null; then
    pcm_log "pid $pid did not power off; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
done
((${#pids[@]})) && pcm_log "stopped ${#pids[@]} host(s)"

# Overlay roots (mount source is the machine name) and anything under our state dir.
awk -v p="$PCM_PREFIX-" -v d="$PCM_STATE_DIR/" \
  '(index($1, p) == 1 && $3 == "overlay") || index($2, d) == 1 {print $2}' /proc/mounts \
  | sort -r | while read -r mnt; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
  done

# The anti-spoofing table of PCM_LAB_ANTISPOOF=1 (up.sh), if any.
if command -v nft >/dev/null && nft list table bridge "$PCM_ANTISPOOF_TABLE" >/dev/null 2>&1; then
  nft delete table bridge "$PCM_ANTISPOOF_TABLE" || true
fi

for ns in $(ip netns list | awk -v p="$PCM_PREFIX-" 'index($1, p) == 1 {print $1}'); do
  ip netns del "$ns" || true
done
for link in $(ip -o link show | awk -F': ' -v p="$PCM_PREFIX-" '{sub(/@.*/, "", $2)} index($2, p) == 1 {print $2}'); do
  ip link del "$link" 2>/dev/null || true
done

# cgroups: remove ours depth-first (systemd inside created children).
for top in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
  [[ -d $top ]] || continue
  for cg in "$top/$PCM_PREFIX"-*; do
    [[ -d $cg ]] || continue
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [[ -d $cg ]] && pcm_log "warning: cgroup $cg still busy"
  done
done

# Per-host state of every host ever booted (also hosts not in PCM_LAB_HOSTS now).
for dir in "${PCM_STATE_DIR:?}"/*/; do
  [[ -d $dir && -f $dir/nspawn.pid || -d $dir/root ]] || continue
  rm -rf "${dir:?}"
done
exit 0
