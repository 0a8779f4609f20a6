# shellcheck shell=bash
# Shared settings of the pycopy nspawn host lab (sourced by the other scripts).
#
# Every object the lab creates carries the prefix "$PCM_PREFIX" (default pcm):
# network namespaces, bridges, veths, overlay mounts, cgroup directories and
# machine names.  Teardown removes only objects with that prefix, and stops
# processes by the PID files it wrote, never by name.

PCM_PREFIX="${PCM_PREFIX:-pcm}"
# Debootstrap base, cached between runs (outside the repository).
PCM_CACHE_DIR="${PCM_CACHE_DIR:-/var/cache/pycopy-lab}"
PCM_BASE="$PCM_CACHE_DIR/bookworm-base"
# Packages of the base tree (a change rebuilds the cached base). iptables lets
# the lab run a dropping firewall that host_prep must open.
PCM_BASE_INCLUDE="systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,iproute2,procps,ca-certificates,iptables"
# Per-run state: overlay upper/work dirs, roots, PID files, SSH key.
PCM_STATE_DIR="${PCM_STATE_DIR:-/var/lib/pycopy-lab/$PCM_PREFIX}"
PCM_LOCK="/run/$PCM_PREFIX-lab.lock"

# Management network (controller <-> hosts, SSH) and data network (replayed traffic).
PCM_MGMT_NET="10.242.0"
PCM_DATA_NET="10.242.1"
PCM_CONTROLLER_IP="$PCM_MGMT_NET.1"
PCM_BR_MGMT="$PCM_PREFIX-mgmt"
PCM_BR_DATA="$PCM_PREFIX-data"
# PCM_LAB_ANTISPOOF=1 (up.sh): the data bridge drops frames whose IPv4 source is
# not the sending host's own address, as a cloud VPC does; this nft table
# (bridge family, in the controller's namespace) is the lab's own.
PCM_ANTISPOOF_TABLE="${PCM_PREFIX}_antispoof"

# host name -> last octet (same on both networks), short tag for link names.
# PCM_LAB_HOSTS picks the hosts to boot (default: the four of the topology;
# online2 is a second online host for the two-feeder layout).
read -r -a PCM_HOSTS <<<"${PCM_LAB_HOSTS:-client online target assistant}"
declare -A PCM_OCTET=([client]=10 [online]=11 [target]=12 [assistant]=13 [online2]=14)
declare -A PCM_TAG=([client]=cl [online]=on [target]=tg [assistant]=as [online2]=o2)
for _h in "${PCM_HOSTS[@]}"; do
  [[ -n ${PCM_OCTET[$_h]:-} ]] || { printf '[%s-lab] error: unknown lab host %s\n' "$PCM_PREFIX" "$_h" >&2; exit 2; }
done
unset _h

pcm_log() { printf '[%s-lab] %s\n' "$PCM_PREFIX" "$*" >&2; }
pcm_die() { pcm_log "error: $*"; exit 1; }

pcm_require_root() {
  [[ $(id -u) -eq 0 ]] || pcm_die "must run as root"
}

pcm_machine() { printf '%s-%s' "$PCM_PREFIX" "$1"; }
pcm_netns() { printf '%s-%s' "$PCM_PREFIX" "$1"; }
pcm_root() { printf '%s/%s/root' "$PCM_STATE_DIR" "$1"; }

# cgroup hierarchies nspawn uses here (hybrid v1+v2), or pure v2.
pcm_cgroup_dirs() {
  local host="$1" name
  name="$(pcm_machine "$host")"
  if [[ -d /sys/fs/cgroup/systemd && -d /sys/fs/cgroup/unified ]]; then
    printf '%s\n' "/sys/fs/cgroup/systemd/$name" "/sys/fs/cgroup/unified/$name"
  elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    printf '%s\n' "/sys/fs/cgroup/$name"
  elif [[ -d /sys/fs/cgroup/systemd ]]; then
    printf '%s\n' "/sys/fs/cgroup/systemd/$name"
  fi
}

# The Debian mirror this machine's apt already uses (never hard-coded).
pcm_debian_mirror() {
  local src=/etc/apt/sources.list.d/debian.sources uri=""
  if [[ -r $src ]]; then
    uri="$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$src")"
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)"
  fi
  [[ -n $uri ]] || pcm_die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources"
  printf '%s\n' "$uri"
}

# Start (boot) the container of a host whose network namespace and overlay
# root already exist; records the nspawn PID in $PCM_STATE_DIR/<host>/nspawn.pid.
pcm_start_container() {
  local host="$1" ns machine dir root
  ns="$(pcm_netns "$host")"
  machine="$(pcm_machine "$host")"
  dir="$PCM_STATE_DIR/$host"
  root="$dir/root"
  # nspawn --keep-unit uses the cgroup it is started in: give each host its own.
  (
    for cg in $(pcm_cgroup_dirs "$host"); do
      mkdir -p "$cg"
      echo "$BASHPID" >"$cg/cgroup.procs"
    done
    exec 8>&- 9>&-  # do not hold the lab lock for the life of the host
    export SYSTEMD_NSPAWN_API_VFS_WRITABLE=network
    exec setsid systemd-nspawn --quiet --register=no --keep-unit --settings=no \
      --link-journal=no --boot --directory="$root" --machine="$machine" \
      --hostname="$host" --network-namespace-path="/run/netns/$ns" \
      --capability=CAP_NET_ADMIN,CAP_NET_RAW --console=read-only \
      </dev/null >>"$dir/console.log" 2>&1
  ) &
  echo "$!" >"$dir/nspawn.pid"
  pcm_log "booting $machine (pid $!, $PCM_MGMT_NET.${PCM_OCTET[$host]} / $PCM_DATA_NET.${PCM_OCTET[$host]})"
}

# Wait until each given host accepts SSH (booted far enough for Ansible).
pcm_wait_ssh() {
  local key="$PCM_STATE_DIR/ssh/id_ed25519" host addr pid deadline
  local ssh_opts=(-i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 -o LogLevel=ERROR)
  deadline=$((SECONDS + ${PCM_BOOT_TIMEOUT:-90}))
  for host in "$@"; do
    addr="$PCM_MGMT_NET.${PCM_OCTET[$host]}"
    until ssh "${ssh_opts[@]}" "root@$addr" true 2>/dev/null; do
      pid="$(cat "$PCM_STATE_DIR/$host/nspawn.pid")"
      if ! kill -0 "$pid" 2>/dev/null; then
        tail -20 "$PCM_STATE_DIR/$host/console.log" >&2 || true
        pcm_die "$host: systemd-nspawn exited during boot"
      fi
      ((SECONDS < deadline)) || pcm_die "$host: no SSH on $addr after ${PCM_BOOT_TIMEOUT:-90} s"
      sleep 0.5
    done
    pcm_log "$host up ($addr)"
  done
}
