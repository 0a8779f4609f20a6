#!/usr/bin/env bash
# Boot the four-host lab: client, online, target, assistant (spec/lab.md §2).
#
#   scripts/lab/up.sh            # build/cache the base, clean stale objects, boot, wait for SSH
#
# Each host is a booted systemd-nspawn container on its own overlay root and in
# its own network namespace, with eth0 on the management bridge (10.242.0.0/24,
# the controller is 10.242.0.1) and eth1 on the data bridge (10.242.1.0/24).
# No host has a default route: the lab is air-gapped by construction.
# Ansible reaches the hosts as root over SSH with the key
# $PCM_STATE_DIR/ssh/id_ed25519 (inventory/lab/hosts.yml).
set -euo pipefail
here="$(dirname "$(readlink -f "$0")")"
# shellcheck source=scripts/lab/common.sh
source "$here/common.sh"
pcm_require_root
for tool in systemd-nspawn ip ssh ssh-keygen setsid flock; do
  command -v "$tool" >/dev/null || pcm_die "$tool missing (apt-get install systemd-container iproute2 openssh-client)"
done

exec 8>"$PCM_LOCK"
flock -n 8 || pcm_die "another $PCM_PREFIX lab run holds $PCM_LOCK"

"$here/down.sh" --locked
"$here/build-base.sh"

mkdir -p "$PCM_STATE_DIR/ssh"
key="$PCM_STATE_DIR/ssh/id_ed25519"
[[ -f $key ]] || ssh-keygen -q -t ed25519 -N '' -C "$PCM_PREFIX-lab" -f "$key"

# Bridges: management (controller has an address) and data (no controller address).
for br in "$PCM_BR_MGMT" "$PCM_BR_DATA"; do
  ip link add "$br" type bridge
  ip link set "$br" up
  # Keep the controller's firewall out of the lab's bridged traffic.
  if [[ -e /sys/class/net/$br/bridge/nf_call_iptables ]]; then
    echo 0 >"/sys/class/net/$br/bridge/nf_call_iptables"
  fi
done
ip addr add "$PCM_CONTROLLER_IP/24" dev "$PCM_BR_MGMT"

# PCM_LAB_ANTISPOOF=1: anti-spoofing on the data bridge, as in a cloud VPC
# (source/destination checks): a frame from a host's data port whose IPv4
# source is not that host's own address is dropped and counted (one rule per
# host, comment = host name). Matches only the lab's ports; down.sh removes it.
if [[ ${PCM_LAB_ANTISPOOF:-0} == 1 ]]; then
  command -v nft >/dev/null || pcm_die "PCM_LAB_ANTISPOOF=1 needs nft (apt-get install nftables)"
  spoof_rules=""
  for h in "${PCM_HOSTS[@]}"; do
    spoof_rules+="    iifname \"$PCM_PREFIX-${PCM_TAG[$h]}-d\" ip saddr != $PCM_DATA_NET.${PCM_OCTET[$h]} counter drop comment \"$h\"\n"
  done
  printf 'table bridge %s {\n  chain spoof {\n    type filter hook forward priority -200; policy accept;\n%b  }\n}\n' \
    "$PCM_ANTISPOOF_TABLE" "$spoof_rules" | nft -f -
  pcm_log "anti-spoofing on $PCM_BR_DATA (nft table bridge $PCM_ANTISPOOF_TABLE)"
fi

boot_host() {
  local host="$1" octet="${PCM_OCTET[$1]}" tag="${PCM_TAG[$1]}"
  local ns machine dir root
  ns="$(pcm_netns "$host")"
  machine="$(pcm_machine "$host")"
  dir="$PCM_STATE_DIR/$host"
  root="$dir/root"

  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "$PCM_PREFIX-$tag-m" type veth peer name eth0 netns "$ns"
  ip link add "$PCM_PREFIX-$tag-d" type veth peer name eth1 netns "$ns"
  ip link set "$PCM_PREFIX-$tag-m" master "$PCM_BR_MGMT" up
  ip link set "$PCM_PREFIX-$tag-d" master "$PCM_BR_DATA" up
  ip -n "$ns" addr add "$PCM_MGMT_NET.$octet/24" dev eth0
  ip -n "$ns" addr add "$PCM_DATA_NET.$octet/24" dev eth1
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set eth1 up

  mkdir -p "$dir/upper" "$dir/work" "$root"
  mount -t overlay "$machine" \
    -o "lowerdir=$PCM_BASE,upperdir=$dir/upper,workdir=$dir/work" "$root"

  echo "$host" >"$root/etc/hostname"
  {
    echo "127.0.0.1 localhost"
    echo "127.0.1.1 $host"
    for h in "${PCM_HOSTS[@]}"; do
      echo "$PCM_DATA_NET.${PCM_OCTET[$h]} $h"
    done
  } >"$root/etc/hosts"
  install -d -m 0700 "$root/root/.ssh"
  install -m 0600 "$key.pub" "$root/root/.ssh/authorized_keys"
  ssh-keygen -A -f "$root" >/dev/null

  pcm_start_container "$host"
}

for host in "${PCM_HOSTS[@]}"; do
  boot_host "$host"
done

# Wait until every host accepts SSH (booted far enough for Ansible).
pcm_wait_ssh "${PCM_HOSTS[@]}"
