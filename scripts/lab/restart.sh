#!/usr/bin/env bash
# Power off and boot again the containers of running lab hosts, as a reboot:
#
#   scripts/lab/restart.sh [HOST...]     # default: every host of PCM_LAB_HOSTS
#
# Each container gets a clean poweroff (SIGTERM to its nspawn PID, as recorded
# by up.sh) and boots again on the same overlay root. Its network namespace
# (addresses, and any route left in it) outlives the container: a test of
# what comes back at boot must remove that state itself first.
set -euo pipefail
# shellcheck source=scripts/lab/common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"
pcm_require_root

exec 8>"$PCM_LOCK"
flock -w 120 8 || pcm_die "another $PCM_PREFIX lab run holds $PCM_LOCK"

hosts=("$@")
((${#hosts[@]})) || hosts=("${PCM_HOSTS[@]}")

for host in "${hosts[@]}"; do
  [[ -n ${PCM_OCTET[$host]:-} ]] || pcm_die "unknown lab host $host"
  pidfile="$PCM_STATE_DIR/$host/nspawn.pid"
  [[ -f $pidfile ]] || pcm_die "$host is not running (no $pidfile)"
  pid="$(cat "$pidfile")"
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || pcm_die "$host: nspawn pid $pid is gone"
  [[ $cmd == *systemd-nspawn*" --machine=$(pcm_machine "$host") "* ]] \
    || pcm_die "$host: pid $pid is not its systemd-nspawn"
  kill -TERM "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    pcm_log "$host: pid $pid did not power off in 15 s; SIGKILL"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  pcm_log "$host powered off"
done

for host in "${hosts[@]}"; do
  pcm_start_container "$host"
done
pcm_wait_ssh "${hosts[@]}"
