#!/usr/bin/env bash
# Build (once) and cache the Debian 12 base tree the lab hosts boot from.
#
#   scripts/lab/build-base.sh          # no-op when the cache is ready
#   scripts/lab/build-base.sh --force  # rebuild
#
# About 45 s and 230 MB on a fresh machine. The result lives in
# /var/cache/pycopy-lab/bookworm-base (outside the repository).
set -euo pipefail
# shellcheck source=scripts/lab/common.sh
source "$(dirname "$(readlink -f "$0")")/common.sh"
pcm_require_root

force=0
[[ ${1:-} == --force ]] && force=1

base_ready() {
  [[ -f $PCM_BASE/.pycopy-lab-ready ]] && [[ "$(sed -n 2p "$PCM_BASE/.pycopy-lab-ready")" == "$PCM_BASE_INCLUDE" ]]
}
if [[ $force -eq 0 ]] && base_ready; then
  pcm_log "base ready: $PCM_BASE"
  exit 0
fi
command -v debootstrap >/dev/null || pcm_die "debootstrap missing (apt-get install debootstrap)"

mkdir -p "$PCM_CACHE_DIR"
exec 9>"$PCM_CACHE_DIR/.build.lock"
flock 9
if [[ $force -eq 0 ]] && base_ready; then
  exit 0
fi

mirror="$(pcm_debian_mirror)"
tmp="$PCM_CACHE_DIR/.base.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
pcm_log "debootstrap bookworm from the machine's apt mirror into $tmp"
debootstrap --variant=minbase \
  --include="$PCM_BASE_INCLUDE" \
  bookworm "$tmp" "$mirror" >"$PCM_CACHE_DIR/debootstrap.log" 2>&1 \
  || { tail -20 "$PCM_CACHE_DIR/debootstrap.log" >&2; pcm_die "debootstrap failed"; }

# Hosts must differ: no shared SSH host keys, machine-id generated at first boot.
rm -f "$tmp"/etc/ssh/ssh_host_*
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
# No background apt activity; no package lists (the hosts are air-gapped and
# an empty-but-fresh list would fool cache_valid_time).
for unit in apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
done
rm -rf "$tmp"/var/lib/apt/lists/*
mkdir -p "$tmp/var/lib/apt/lists/partial"
touch -d '2000-01-01' "$tmp/var/lib/apt/lists"
rm -f "$tmp"/var/cache/apt/archives/*.deb
# Keep the console quiet and boots quick.
ln -sf /dev/null "$tmp/etc/systemd/system/getty@.service"
ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$tmp/etc/systemd/system/systemd-networkd-wait-online.service"
# Root logs in with a key only.
mkdir -p "$tmp/etc/ssh/sshd_config.d"
printf 'PermitRootLogin prohibit-password\nUseDNS no\nPasswordAuthentication no\n' \
  >"$tmp/etc/ssh/sshd_config.d/pycopy-lab.conf"
printf '%s\n%s\n' "$(date -u +%FT%TZ)" "$PCM_BASE_INCLUDE" >"$tmp/.pycopy-lab-ready"

rm -rf "$PCM_BASE"
mv "$tmp" "$PCM_BASE"
trap - EXIT
pcm_log "base ready: $PCM_BASE ($(du -sh "$PCM_BASE" | cut -f1))"
