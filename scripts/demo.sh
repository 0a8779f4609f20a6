#!/usr/bin/env bash
# The main job, on the built-in local lab (a fresh Debian 12 machine, as root):
#
#   scripts/demo.sh [N]
#
# boots the four-host nspawn lab (client, online, target, assistant; no route
# to any package archive), builds the offline bundle, runs
# playbooks/replay.yml from it, sends N real HTTP requests from the client to
# the online host's service, and prints how many of them reached the target:
#
#   target received X of N requests
#
# Exits 0 only if all N arrived. The lab is torn down at the end (also on
# failure or Ctrl-C). Ansible output goes to .cache/demo/*.log.
set -euo pipefail
repo="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
cd "$repo"
count="${1:-${PYCOPY_DEMO_REQUESTS:-200}}"
[[ $count =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N>0]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (it boots containers)" >&2; exit 2; }

logs="$repo/.cache/demo"
mkdir -p "$logs"
export ANSIBLE_HOME="$repo/.cache/ansible" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0

say() { printf '[demo] %s\n' "$*"; }
run_logged() {  # name, command...
  local name="$1"
  shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    say "$name failed; last lines of $logs/$name.log:"
    tail -25 "$logs/$name.log" >&2
    exit 1
  fi
}
trap '"$repo/scripts/lab/down.sh" >"$logs/teardown.log" 2>&1 || true' EXIT

t0=$SECONDS
say "booting the lab (client, online, target, assistant)"
run_logged lab-up scripts/lab/up.sh
say "building the offline bundle and starting the lab's HTTP services"
run_logged prepare ansible-playbook -i inventory/lab molecule/default/prepare.yml
say "deploying with playbooks/replay.yml (offline bundle, no network on the hosts)"
run_logged replay ansible-playbook -i inventory/lab playbooks/replay.yml

key=/var/lib/pycopy-lab/pcm/ssh/id_ed25519
ssh_lab() {
  ssh -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR "root@$1" "${@:2}"
}
tag="demo-$(date +%s%N)"
say "sending $count HTTP requests from client (10.242.1.10) to online (10.242.1.11:80)"
answers="$(ssh_lab 10.242.0.10 python3 - --url "http://10.242.1.11:80/$tag" --count "$count" \
  <playbooks/files/http_probe.py || true)"
answered="$(printf '%s' "$answers" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])' 2>/dev/null || echo 0)"
say "online answered $answered of $count"

received=0
for _ in $(seq 1 40); do
  received="$(ssh_lab 10.242.0.12 "grep -F -- '$tag' /var/log/pycopy-lab/http.log | awk '{print \$3}' | sort -u | wc -l")"
  ((received >= count)) && break
  sleep 0.5
done
echo "target received $received of $count requests"
say "done in $((SECONDS - t0)) s; tearing the lab down"
((received == count))
