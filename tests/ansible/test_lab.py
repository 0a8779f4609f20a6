"""Runs on booted systemd-nspawn hosts (scripts/lab/): check mode, Molecule, the demo."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.lab.httpserver import CANDIDATE_CHANGES

from .conftest import REPO, lab_unavailable, run, tail

pytestmark = pytest.mark.molecule

SSH = [
    "ssh",
    "-i",
    "/var/lib/pycopy-lab/pcm/ssh/id_ed25519",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
]


def test_check_mode_on_fresh_hosts_changes_nothing(nspawn_lab):
    run(["ansible-playbook", "playbooks/bundle.yml"], timeout=600, check=True)
    result = run(
        ["ansible-playbook", "-i", "inventory/lab", "--check", "playbooks/replay.yml"], timeout=600
    )
    assert result.returncode == 0, tail(result)
    recap = dict(re.findall(r"^(lab-\w+)\s+:\s+(.*)$", result.stdout, re.M))
    assert set(recap) == {"lab-online", "lab-target", "lab-assistant"}
    assert all("failed=0" in line for line in recap.values()), recap
    # Check mode reported what it would do, and did none of it.
    probe = run(
        SSH
        + [
            "root@10.242.0.13",
            "ls /opt/pycopy /etc/systemd/system/pycopy-* 2>&1;"
            " id pycopy-intercept 2>&1; cat /proc/sys/net/ipv4/ip_forward",
        ],
        timeout=30,
    )
    assert "No such file or directory" in probe.stdout
    assert "no such user" in probe.stdout
    route = run(SSH + ["root@10.242.0.12", "ip -o route show 10.242.1.10/32"], timeout=30)
    assert route.stdout.strip() == ""


def test_tcpcopy_refuses_to_start_when_intercept_does_not_answer(nspawn_lab):
    run(["ansible-playbook", "playbooks/bundle.yml"], timeout=600, check=True)
    # intercept listens on the assistant's loopback only: the preflight cannot
    # know, and tcpcopy's connection to 10.242.1.13:36524 is refused.
    result = run(
        [
            "ansible-playbook",
            "-i",
            "inventory/lab",
            "playbooks/replay.yml",
            "-e",
            "intercept_bind_address=127.0.0.1",
            "-e",
            "tcpcopy_wait_timeout=3",
        ],
        timeout=600,
    )
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "intercept does not answer on 10.242.1.13 port 36524" in out, tail(result)
    assert "tcpcopy was not started" in out
    assert "DEPLOY FAILED" in out and "tcpcopy stopped and disabled on: lab-online" in out
    unit = run(SSH + ["root@10.242.0.11", "systemctl is-active pycopy-tcpcopy.service"], timeout=30)
    assert unit.stdout.strip() != "active"
    listening = run(SSH + ["root@10.242.0.13", "ss -Htln sport = :36524"], timeout=30)
    assert "127.0.0.1:36524" in listening.stdout  # intercept itself was deployed and listens


def test_fake_client_range_gets_a_network_route_and_replicates(nspawn_lab):
    # tcpcopy -c 10.242.5.x rewrites the clients; the target routes 10.242.5.0/24
    # to the assistant (route add -net ... gw ...).
    run(
        ["ansible-playbook", "-i", "inventory/lab", "molecule/default/prepare.yml"],
        timeout=600,
        check=True,
    )
    result = run(
        [
            "ansible-playbook",
            "-i",
            "inventory/lab",
            "playbooks/replay.yml",
            "-e",
            "tcpcopy_client_range=10.242.5.x",
            "-e",
            '{"pycopy_client_addresses": ["10.242.5.0/24"]}',
            # The probe address lies in the routed fake network too.
            "-e",
            "pycopy_probe_address=10.242.5.250",
        ],
        timeout=600,
    )
    assert result.returncode == 0, tail(result)
    assert "target received 20 of 20 probe requests" in result.stdout
    route = run(SSH + ["root@10.242.0.12", "ip -o route show 10.242.5.0/24"], timeout=30)
    assert "via 10.242.1.13 " in route.stdout
    log = run(
        SSH + ["root@10.242.0.12", "grep pycopy-probe /var/log/pycopy-lab/http.log"], timeout=30
    )
    sources = {line.split()[3].rsplit(":", 1)[0] for line in log.stdout.splitlines()}
    assert sources and all(ip.startswith("10.242.5.") for ip in sources), sources


def molecule_test(scenario: str, timeout: float) -> tuple[str, list[tuple[str, str]]]:
    """``molecule test -s scenario`` (skips without the lab): its output, kept in
    .cache/molecule-<scenario>.log, and the (passed, skipped) of each verify step."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    result = run(["molecule", "test", "-s", scenario], timeout=timeout)
    log = REPO / ".cache" / f"molecule-{scenario}.log"
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"see {log}\n{tail(result)}"
    out = result.stdout + result.stderr
    return out, re.findall(r"=+ (\d+) passed(?:, (\d+) skipped)? in ", out)


def test_molecule_default_scenario():
    report = REPO / ".cache" / "molecule-compare"
    shutil.rmtree(report, ignore_errors=True)
    out, summaries = molecule_test("default", 1200)
    # Both verify steps ran and passed tests: after converge, and after stop.yml.
    assert len(summaries) == 2, summaries
    assert all(int(passed) > 0 for passed, _ in summaries), summaries
    assert " failed" not in "".join(re.findall(r"=+ .* in [0-9.]+s", out))
    # side_effect ran playbooks/compare.yml (baseline 8091, candidate 8092 with
    # the planted changes): the fetched report names exactly those, on the candidate.
    summary = json.loads((report / "summary.json").read_text())
    base, cand = "10.242.1.12:8091", "10.242.1.12:8092"
    assert summary["baseline"] == base and summary["targets"] == [base, cand], summary["targets"]
    found = sorted((g["endpoint"], g["target"], g["kind"], g["field"])
                   for g in summary["regressions"])
    planted = sorted((f"GET /api/{ep}/{{id}}", cand, kind, field)
                     for ep, (kind, field) in CANDIDATE_CHANGES.items())
    assert found == planted, json.dumps(summary["regressions"], indent=1)[:3000]
    assert "<svg" in (report / "report.html").read_text()
    records = [f.name for f in report.glob("compare-*.jsonl")]
    assert records and all(n.startswith("compare-lab-online-") for n in records), records


def test_demo_reports_every_request_at_the_target():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    result = run(["scripts/demo.sh", "100"], timeout=900)
    assert result.returncode == 0, tail(result)
    assert "target received 100 of 100 requests" in result.stdout


def test_molecule_safety_scenario():
    # Two online hosts (own -f each) feeding one assistant; then every container
    # restarted with the target's routes flushed first: replication with no Ansible run.
    out, summaries = molecule_test("safety", 1200)
    # verify after converge, and verify after the restart: every test ran and passed both times.
    assert len(summaries) == 2, summaries
    assert all(int(passed) == 6 and not skipped for passed, skipped in summaries), summaries
    assert "phase restarted: target received 60 of 60 from 10.242.1.14" in out


def test_molecule_cloud_scenario():
    # pycopy_topology: cloud on client/online/target only, the data bridge
    # dropping spoofed frames and no route on the target; then stop.yml.
    out, summaries = molecule_test("cloud", 900)
    # verify after converge (7 tests, 3 skipped) and after stop.yml (3, 7 skipped)
    assert summaries == [("7", "3"), ("3", "7")], summaries
    assert "cloud: target received 100 of 100 from 10.242.1.11" in out
    assert "target received 20 of 20 probe requests" in out  # replay.yml's own check
