#!/usr/bin/env bash
# Install everything pycopy's lab, tests and deployment need on a fresh Debian 12
# machine (run as root). Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(iproute2 iptables nftables tcpdump wrk libpcap0.8 systemd-container debootstrap
          openssh-client procps psmisc util-linux python3-venv
          prometheus  # promtool: checks deploy/prometheus/pycopy-alerts.yml (issue 12)
          logrotate   # checks deploy/logrotate/pycopy (issue 12)
          chromium    # renders pycopy-compare's report.html in the browser test (issue 9)
          pypy3 python3-scapy  # a Python 3.9 with scapy: the engine runs on RHEL's 3.9 (tests/e2e/test_python39.py)
          ${PYCOPY_EXTRA_APT:-})
# the offline bundle build resolves Debian packages: it needs apt's package lists
[[ -n $(ls /var/lib/apt/lists/*_Packages* 2>/dev/null) ]] || apt-get update -qq
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export PIP_ROOT_USER_ACTION=ignore
PY=${PYTHON:-python3}
stamp=.cache/deps.stamp
mkdir -p .cache
if [[ ! -f $stamp || requirements-dev.txt -nt $stamp || pyproject.toml -nt $stamp ]] \
   || ! "$PY" -c "import pycopy_engine, scapy, ansible, molecule, testinfra, paramiko, jinja2" 2>/dev/null; then
  echo "install-deps: python packages"
  "$PY" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  "$PY" -m pip install -q --disable-pip-version-check -e .
  touch "$stamp"
fi
echo "install-deps: ok"
