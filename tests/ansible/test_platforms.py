"""Platform decisions for hosts this machine cannot boot, from injected facts.

Every host below is this machine (connection: local), but its facts are put in
Ansible's fact cache (set_fact cacheable) first: the facts the distributions report (written
from their documentation: ansible_distribution, _version, _major_version,
_release, ansible_os_family, ansible_architecture, ansible_python). Only the
decision task files run (preflight's platform check, the EL8 interpreter
choice, the per-platform constants and the package source): nothing changes
here. EL and Ubuntu hosts are covered only this way (docs/platforms.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO, tail, tool_env


def run_with(
    cmd: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO, env={**tool_env(), **env}, capture_output=True, text=True, timeout=timeout
    )


def facts(dist, version, release, family, py, arch="x86_64", python_path="/usr/bin/python3"):
    major = version.split(".")[0]
    pmajor, pminor, pmicro = (int(x) for x in py.split("."))
    return {
        "ansible_distribution": dist,
        "ansible_distribution_version": version,
        "ansible_distribution_major_version": major,
        "ansible_distribution_release": release,
        "ansible_os_family": family,
        "ansible_architecture": arch,
        "ansible_system": "Linux",
        "ansible_python": {
            "executable": python_path,
            "version": {"major": pmajor, "minor": pminor, "micro": pmicro},
            "type": "cpython",
        },
    }


def probe(os_id, version, *pythons, arch="x86_64"):
    return [f"id={os_id}", f"version={version}", f"arch={arch}"] + [f"python={p}" for p in pythons]


BOOKWORM_BUNDLE = {
    "os": {
        "distribution": "Debian",
        "release": "12",
        "codename": "bookworm",
        "architecture": "x86_64",
        "dpkg_architecture": "amd64",
        "packages": [{"package": "libpcap0.8"}, {"package": "chrony"}, {"package": "libc6"}],
    }
}

# An air-gapped host: deploys from a bundle, with the site's NTP server.
AIR_GAPPED = {"offline_bundle": "/b.tar.gz", "host_prep_chrony_servers": ["10.1.2.3"]}

# host: (facts, raw probe lines, missing packages, bundle manifest, extra vars)
HOSTS = {
    "centos7": (
        facts("CentOS", "7.9", "Core", "RedHat", "2.7.5", python_path="/usr/bin/python"),
        probe("centos", "7", "/usr/bin/python3 3.6"),
        ["libpcap"],
        {},
        {},
    ),
    "rhel8": (
        facts("RedHat", "8.10", "Ootpa", "RedHat", "3.12.3", python_path="/usr/bin/python3.12"),
        probe("rhel", "8.10", "/usr/bin/python3 3.6"),
        ["libpcap", "chrony"],
        BOOKWORM_BUNDLE,
        {"host_prep_el_repo_baseurl": "file:///mnt/rhel8", **AIR_GAPPED},
    ),
    "rocky8": (
        facts(
            "Rocky", "8.9", "Green Obsidian", "RedHat", "3.9.18", python_path="/usr/bin/python3.9"
        ),
        probe("rocky", "8.9", "/usr/bin/python3.9 3.9", "/usr/bin/python3 3.6"),
        ["libpcap"],
        BOOKWORM_BUNDLE,
        AIR_GAPPED,
    ),
    "alma8": (
        facts(
            "AlmaLinux",
            "8.10",
            "Cerulean Leopard",
            "RedHat",
            "3.12.3",
            python_path="/usr/bin/python3.12",
        ),
        probe("almalinux", "8.10", "/usr/bin/python3 3.6"),
        [],
        {},
        {"host_prep_el8_python_package": "python39"},
    ),
    "alma9": (
        facts("AlmaLinux", "9.4", "Seafoam Ocelot", "RedHat", "3.9.18"),
        probe("almalinux", "9.4", "/usr/bin/python3.11 3.11", "/usr/bin/python3 3.9"),
        ["chrony"],
        {},
        {"host_prep_el_repo_baseurl": "http://repo.example.internal/alma9/"},
    ),
    "stream9": (
        facts("CentOS", "9", "Stream", "RedHat", "3.9.19"),
        probe("centos", "9", "/usr/bin/python3 3.9"),
        [],
        {},
        {},
    ),
    "ubuntu2204": (
        facts("Ubuntu", "22.04", "jammy", "Debian", "3.10.12"),
        probe("ubuntu", "22.04", "/usr/bin/python3 3.10"),
        ["libpcap0.8"],
        BOOKWORM_BUNDLE,
        AIR_GAPPED,
    ),
    "ubuntu2404": (
        facts("Ubuntu", "24.04", "noble", "Debian", "3.12.3"),
        probe("ubuntu", "24.04", "/usr/bin/python3 3.12"),
        ["libpcap0.8t64"],
        {},
        {},
    ),
    "debian11": (
        facts("Debian", "11.11", "bullseye", "Debian", "3.9.2"),
        probe("debian", "11", "/usr/bin/python3 3.9"),
        ["libpcap0.8"],
        BOOKWORM_BUNDLE,
        {},
    ),
    "debian12": (
        facts("Debian", "12.8", "bookworm", "Debian", "3.11.2"),
        probe("debian", "12", "/usr/bin/python3 3.11"),
        ["libpcap0.8", "chrony"],
        BOOKWORM_BUNDLE,
        AIR_GAPPED,
    ),
    "debian12arm": (
        facts("Debian", "12.8", "bookworm", "Debian", "3.11.2", arch="aarch64"),
        probe("debian", "12", "/usr/bin/python3 3.11", arch="aarch64"),
        ["libpcap0.8"],
        BOOKWORM_BUNDLE,
        AIR_GAPPED,
    ),
    "fedora40": (
        facts("Fedora", "40", "", "RedHat", "3.12.4"),
        probe("fedora", "40", "/usr/bin/python3 3.12"),
        [],
        {},
        {},
    ),
    "airgapped_no_ntp": (
        facts("Debian", "12.8", "bookworm", "Debian", "3.11.2"),
        probe("debian", "12", "/usr/bin/python3 3.11"),
        [],
        BOOKWORM_BUNDLE,
        {"offline_bundle": "/b.tar.gz"},
    ),
    "nopython": (
        facts("Debian", "12.8", "bookworm", "Debian", "3.11.2"),
        probe("debian", "12"),
        [],
        {},
        {},
    ),
}


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("platforms")
    out = root / "out"
    out.mkdir()
    hosts = {}
    for name, (host_facts, lines, missing, manifest, extra) in HOSTS.items():
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "t_facts": host_facts,
            "t_probe_lines": lines,
            "t_missing": missing,
            "t_manifest": manifest,
            "t_out": str(out),
            **extra,
        }
    inventory = root / "hosts.json"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
    result = run_with(
        ["ansible-playbook", "-i", str(inventory), "tests/ansible/platforms/decide.yml"],
        timeout=300,
        env={
            "ANSIBLE_GATHERING": "explicit",
            "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        },
    )
    assert result.returncode == 0, tail(result)
    found = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(found) == set(HOSTS), tail(result)
    return found


ACCEPTED = [
    "rhel8",
    "rocky8",
    "alma9",
    "stream9",
    "ubuntu2204",
    "ubuntu2404",
    "debian12",
    "debian12arm",
]


@pytest.mark.parametrize("host", ACCEPTED)
def test_supported_platforms_are_accepted(verdicts, host):
    assert verdicts[host]["platform"] == {"verdict": "accepted", "message": ""}


def test_el7_is_refused_with_the_reason_and_the_way_out(verdicts):
    for stage in ("platform", "interpreter"):
        verdict = verdicts["centos7"][stage]
        assert verdict["verdict"] == "refused", stage
        message = verdict["message"]
        assert message.startswith("centos7: EL7 (RHEL/CentOS 7) is refused"), message
        assert "no Python 3.9" in message and "Leapp" in message
        assert "Nothing was changed" in message


def test_debian11_and_fedora_are_refused(verdicts):
    assert verdicts["debian11"]["platform"]["verdict"] == "refused"
    assert "Debian 11 (bullseye) is refused" in verdicts["debian11"]["platform"]["message"]
    fedora = verdicts["fedora40"]["platform"]
    assert fedora["verdict"] == "refused"
    assert "Fedora 40" in fedora["message"] and "Supported: Debian 12" in fedora["message"]


def test_el8_without_python39_installs_one_from_the_site_repository(verdicts):
    chosen = verdicts["rhel8"]["interpreter"]
    command = chosen.pop("command").split()
    assert chosen == {
        "verdict": "accepted",
        "interpreter": "/usr/bin/python3.12",
        "install": "python3.12",
        "gpgkey": "/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release",
    }
    # Only the media's BaseOS and AppStream, signatures checked with the release key.
    assert command == [
        "dnf",
        "-y",
        "install",
        "--disablerepo='*'",
        "--repofrompath=pycopy-site-1,file:///mnt/rhel8/BaseOS",
        "--setopt=pycopy-site-1.gpgcheck=1",
        "--setopt=pycopy-site-1.gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release",
        "--repofrompath=pycopy-site-2,file:///mnt/rhel8/AppStream",
        "--setopt=pycopy-site-2.gpgcheck=1",
        "--setopt=pycopy-site-2.gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release",
        "--enablerepo='pycopy-site-*'",
        "python3.12",
    ]


def test_el8_without_site_repository_installs_from_the_hosts_repositories(verdicts):
    chosen = verdicts["alma8"]["interpreter"]
    assert chosen["interpreter"] == "/usr/bin/python3.9"  # derived from python39
    assert chosen["command"] == "dnf -y install python39"
    assert chosen["gpgkey"].endswith("RPM-GPG-KEY-AlmaLinux")


def test_el8_with_python39_uses_it_and_installs_nothing(verdicts):
    chosen = verdicts["rocky8"]["interpreter"]
    assert chosen["interpreter"] == "/usr/bin/python3.9" and chosen["install"] == ""
    assert chosen["command"] == ""
    assert chosen["gpgkey"] == "/etc/pki/rpm-gpg/RPM-GPG-KEY-rockyofficial"


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("alma9", "RPM-GPG-KEY-AlmaLinux-9"),
        ("stream9", "RPM-GPG-KEY-centosofficial"),
        ("ubuntu2204", ""),
        ("ubuntu2404", ""),
        ("debian12", ""),
    ],
)
def test_other_platforms_use_the_system_python(verdicts, host, key):
    chosen = verdicts[host]["interpreter"]
    assert chosen["interpreter"] == "/usr/bin/python3" and chosen["install"] == ""
    assert chosen["gpgkey"].endswith(key) if key else chosen["gpgkey"] == ""


def test_an_air_gapped_host_without_ntp_servers_is_refused(verdicts):
    refused = verdicts["airgapped_no_ntp"]["platform"]
    assert refused["verdict"] == "refused"
    message = " ".join(refused["message"].split())
    assert message.startswith(
        "host_prep_chrony_servers is empty, but airgapped_no_ntp is air-gapped"
    )
    assert "Nothing was changed" in message


def test_a_host_without_python3_is_refused(verdicts):
    refused = verdicts["nopython"]["interpreter"]
    assert refused["verdict"] == "refused"
    assert (
        "has no\n" not in refused["message"]
        and "/usr/bin/python3 of version 3.8" in refused["message"]
    )


def test_el8_uses_commands_where_the_modules_need_platform_python(verdicts):
    assert verdicts["rhel8"]["packages"]["bindings"] is False
    assert verdicts["rocky8"]["packages"]["bindings"] is False
    assert verdicts["alma9"]["packages"]["bindings"] is True
    for host in ("rhel8", "rocky8", "alma9", "stream9"):
        packages = verdicts[host]["packages"]
        assert packages["libpcap"] == "libpcap"
        assert (packages["chrony_service"], packages["chrony_config"]) == (
            "chronyd",
            "/etc/chrony.conf",
        )


def test_ubuntu_2404_names_the_t64_library(verdicts):
    assert verdicts["ubuntu2404"]["packages"]["libpcap"] == "libpcap0.8t64"
    assert verdicts["ubuntu2204"]["packages"]["libpcap"] == "libpcap0.8"
    assert verdicts["debian12"]["packages"]["chrony_service"] == "chrony"


def test_el_packages_come_from_the_site_repository(verdicts):
    assert verdicts["rhel8"]["packages"]["source"] == "site"
    assert verdicts["alma9"]["packages"]["source"] == "site"
    assert verdicts["alma9"]["packages"]["gpgkey"].endswith("RPM-GPG-KEY-AlmaLinux-9")


def test_bundle_packages_install_only_on_their_release_and_architecture(verdicts):
    assert verdicts["debian12"]["packages"]["source"] == "bundle"
    for host, shown in (
        ("ubuntu2204", "Ubuntu 22.04 (jammy) x86_64"),
        ("debian12arm", "Debian 12.8 (bookworm) aarch64"),
    ):
        refused = verdicts[host]["packages"]
        assert refused["source"] == "refused", host
        message = " ".join(refused["message"].split())
        assert f"{host} ({shown}) lacks" in message
        assert "built for Debian 12 (bookworm) x86_64 and are installed only there" in message
        assert "bookworm's libc6" in message and "Nothing was installed" in message
        assert "host_prep_use_host_repositories=true" in message


def test_el_bundle_without_site_repository_is_refused(verdicts):
    refused = verdicts["rocky8"]["packages"]
    assert refused["source"] == "refused"
    assert "host_prep_el_repo_baseurl" in refused["message"]


def test_nothing_missing_or_online_hosts_need_no_bundle(verdicts):
    assert verdicts["stream9"]["packages"]["source"] == "none"
    assert verdicts["ubuntu2404"]["packages"]["source"] == "host"
