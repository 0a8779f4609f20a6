"""The preflight (playbooks/preflight.yml, first play of replay.yml) rejects
every bad input before any host changes, each with a message naming the
variable and the fix.

Runs on this machine only: the hosts of tests/ansible/preflight/hosts.yml use
connection local, and the preflight only reads (assert, set_fact, facts).
Every run starts in a scratch directory outside the repository, so the
playbooks are also proven to work from any directory (no ansible.cfg).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import REPO, tool_env

INVENTORY = REPO / "tests" / "ansible" / "preflight" / "hosts.yml"
CLOUD = REPO / "tests" / "ansible" / "preflight" / "cloud.yml"
PREFLIGHT = REPO / "playbooks" / "preflight.yml"

# name -> (extra arguments, texts the failure must contain)
BAD_INPUTS: dict[str, tuple[list[str], list[str]]] = {
    "example_inventory": (
        ["-i", str(REPO / "inventory" / "production"), "-e", "target=192.0.2.12:8080"],
        [
            "pycopy_address of web1.example.net is '192.0.2.11'",
            "documentation",
            "Fix: set pycopy_address",
        ],
    ),
    "no_groups": (
        ["-i", "localhost,", "-e", "target=10.77.1.12:8080"],
        ["groups online, target and assistant", "Fix: pass your inventory with -i"],
    ),
    "target_missing": (["-e", "target="], ["target is ''", "Fix: run with -e target=IP:PORT"]),
    "target_not_ip_port": (
        ["-e", "target=test1:8080"],
        ["target is 'test1:8080'", "Fix: run with -e target=IP:PORT"],
    ),
    "target_not_in_target_group": (
        ["-e", "target=10.77.1.99:8080"],
        [
            "The IP in target (10.77.1.99:8080) is not the pycopy_address of a host of group 'target'",
            "(those are: 10.77.1.12)",
            "Fix: -e target=",
        ],
    ),
    "address_not_ip": (
        ["-e", "pycopy_address=web1.example.net"],
        ["is 'web1.example.net' (not an IPv4 address)", "Fix: set pycopy_address"],
    ),
    "clients_empty": (
        ["-e", json.dumps({"pycopy_client_addresses": []})],
        [
            "pycopy_client_addresses (testserver_route_clients on pf-target) is empty",
            "Fix: set pycopy_client_addresses",
        ],
    ),
    "clients_old_placeholder": (
        ["-e", json.dumps({"pycopy_client_addresses": ["192.0.2.0/24"]})],
        ["contains documentation placeholders (RFC 5737): ['192.0.2.0/24']", "Fix: replace them"],
    ),
    "clients_placeholder_198": (
        [
            "-e",
            json.dumps(
                {"pycopy_client_addresses": ["10.77.1.10", "198.51.100.0/24", "10.77.5.0/24"]}
            ),
        ],
        ["documentation placeholders (RFC 5737): ['198.51.100.0/24']"],
    ),
    "clients_placeholder_203": (
        ["-e", json.dumps({"pycopy_client_addresses": ["203.0.113.7", "10.77.5.0/24"]})],
        ["documentation placeholders (RFC 5737): ['203.0.113.7']"],
    ),
    "clients_malformed": (
        ["-e", json.dumps({"pycopy_client_addresses": ["10.77.1.300", "10.77.5.0/24"]})],
        [
            "not IPv4 addresses or CIDRs: ['10.77.1.300']",
            "Fix: write each as a.b.c.d or a.b.c.d/len",
        ],
    ),
    "c_range_not_routed": (
        ["-e", "tcpcopy_client_range=10.77.6.x"],
        [
            "does not cover the -c range 10.77.6.x of pf-online",
            "Fix: add that address or network to pycopy_client_addresses",
        ],
    ),
    "c_range_placeholder": (
        ["-e", "tcpcopy_client_range=192.0.2.x"],
        ["tcpcopy_client_range (-c) on pf-online is '192.0.2.x'", "documentation placeholder"],
    ),
    "c_range_malformed": (
        ["-e", "tcpcopy_client_range=10.77.x.x"],
        ["tcpcopy_client_range (-c) on pf-online is '10.77.x.x'", "Fix: give the fake client"],
    ),
    "probe_address_missing": (
        ["-e", "pycopy_probe_address="],
        [
            "pycopy_probe_address (tcpcopy_probe_address on pf-online) is ''",
            "Fix: set pycopy_probe_address",
        ],
    ),
    "probe_address_is_a_host": (
        ["-e", "pycopy_probe_address=10.77.1.12"],
        [
            "pycopy_probe_address (tcpcopy_probe_address on pf-online) is '10.77.1.12'",
            "no real client or host uses",
        ],
    ),
    "probe_address_not_routed": (
        ["-e", "pycopy_probe_address=10.77.9.9"],
        ["does not cover pycopy_probe_address 10.77.9.9", "Fix: add that address or network"],
    ),
    "ports_disagree": (
        ["-e", "tcpcopy_intercept_port=4000"],
        [
            "tcpcopy_intercept_port on pf-online is 4000, but intercept listens on 36524",
            "Fix: set only intercept_port",
        ],
    ),
    "intercept_target_port_disagrees": (
        ["-e", "intercept_target_port=9999"],
        [
            "intercept_target_port is 9999",
            "target is '10.77.1.12:8080'",
            "Fix: leave intercept_target_port unset",
        ],
    ),
    "gateway_not_an_assistant": (
        ["-e", "testserver_route_gateway=10.77.1.50"],
        [
            "testserver_route_gateway on pf-target is '10.77.1.50', not the pycopy_address of a host of group 'assistant'"
        ],
    ),
    "intercept_server_not_an_assistant": (
        ["-e", json.dumps({"tcpcopy_intercept_servers": ["10.77.1.50"]})],
        [
            "tcpcopy_intercept_servers on pf-online is ['10.77.1.50']",
            "Fix: leave tcpcopy_intercept_servers",
        ],
    ),
    "port_shift_out_of_range": (
        ["-e", "tcpcopy_port_shift=40"],
        ["tcpcopy_port_shift (-f) on pf-online is '40'", "Fix: an integer 0-31"],
    ),
    "argument_spec_choice": (
        ["-e", "intercept_state=sideways"],
        [
            "role intercept rejects its variables: value of intercept_state must be one of: present, absent, got: sideways",
            "Fix: give each variable",
        ],
    ),
    "argument_spec_type": (
        ["-e", "tcpcopy_wait_timeout=soon"],
        ["role tcpcopy rejects its variables", "tcpcopy_wait_timeout", "Fix: give each variable"],
    ),
    "argument_spec_of_host_prep": (
        ["-e", "host_prep_firewall_mode=wide-open"],
        ["role host_prep rejects its variables", "host_prep_firewall_mode"],
    ),
    "topology_unknown": (
        ["-e", "pycopy_topology=vpc"],
        ["pycopy_topology is 'vpc'", "Fix: classic"],
    ),
    "cloud_with_an_assistant_group": (
        ["-e", "pycopy_topology=cloud"],
        [
            "pycopy_topology is cloud: the inventory needs hosts in the groups online and target,"
            " and none in group assistant",
            "assistant=['pf-assistant']",
            "Fix: remove the assistant group",
        ],
    ),
    "cloud_c_not_an_own_address": (
        ["-i", str(CLOUD), "-e", "tcpcopy_client_range=10.77.1.11,10.77.5.7"],
        [
            "tcpcopy_client_range (-c) on pf-online is '10.77.1.11,10.77.5.7'",
            "10.77.5.7/32 is not an address of pf-online",
            "Fix: leave tcpcopy_client_range unset",
        ],
    ),
    "cloud_c_range": (
        ["-i", str(CLOUD), "-e", "tcpcopy_client_range=10.77.1.x"],
        ["10.77.1.0/24 is not an address of pf-online"],
    ),
    "cloud_target_not_in_target_group": (
        ["-i", str(CLOUD), "-e", "target=10.77.1.99:8080"],
        ["The IP in target (10.77.1.99:8080) is not the pycopy_address of a host of group 'target'"],
    ),
    "extra_target_not_in_target_group": (
        ["-e", json.dumps({"pycopy_extra_targets": ["10.77.1.12:8081", "10.77.1.98:8080"]})],
        [
            "pycopy_extra_targets (tcpcopy_extra_targets on pf-online) is",
            "not the pycopy_address of a host of group 'target' (those are: 10.77.1.12): 10.77.1.98",
            "Fix: list further targets as IP:PORT",
        ],
    ),
    "extra_target_not_ip_port": (
        ["-e", json.dumps({"pycopy_extra_targets": ["10.77.1.12:70000", "test2:80"]})],
        ["not IP:PORT: 10.77.1.12:70000, test2:80"],
    ),
    "extra_target_is_the_target": (
        ["-e", json.dumps({"pycopy_extra_targets": ["10.77.1.12:8080"]})],
        ["each once and not the target 10.77.1.12:8080"],
    ),
    "intercept_misses_an_extra_port": (
        ["-e", json.dumps({"pycopy_extra_targets": ["10.77.1.12:8081"],
                           "intercept_target_ports": [8080]})],
        [
            "intercept_target_ports is [8080], but pycopy_extra_targets",
            "also needs port(s) 8081",
            "Fix: leave intercept_target_ports unset",
        ],
    ),
    "tcpcopy_workers_without_interfaces": (
        ["-e", "tcpcopy_workers=2"],
        [
            "tcpcopy_workers on pf-online is '2': no tcpcopy_interfaces: the workers share an"
            " AF_PACKET capture (-i).",
            "Fix: 1-64; above 1, set tcpcopy_interfaces",
        ],
    ),
    "intercept_workers_zero": (
        ["-e", "intercept_workers=0"],
        ["intercept_workers on pf-assistant is '0'. Fix: an integer 1-64."],
    ),
    "limit_leaves_out_the_target": (
        ["--limit", "online:assistant"],
        ["Hosts of the topology are not in this run: pf-target", "run without --limit"],
    ),
}

GOOD_INPUTS: dict[str, list[str]] = {
    "inventory_as_given": [],
    # One variable moves every port: tcpcopy's default follows intercept_port.
    "intercept_port_moves_every_port": ["-e", "intercept_port=4000"],
    "c_range_inside_the_client_networks": ["-e", "tcpcopy_client_range=10.77.5.x"],
    # Worker processes on both sides (tcpcopy's need its capture interfaces).
    "workers": ["-e", json.dumps({"tcpcopy_workers": 2, "tcpcopy_interfaces": ["eth0"],
                                  "intercept_workers": 2})],
    # A comparison experiment's further targets (playbooks/compare.yml).
    "extra_targets": ["-e", json.dumps({"pycopy_extra_targets": ["10.77.1.12:8081"]})],
    # Own-address mode: no assistant, no client networks, no probe address, no route vars.
    "cloud_topology": ["-i", str(CLOUD)],
    # -c with the host's own address (pycopy_address; the gathered ones count too).
    "cloud_c_own_address": ["-i", str(CLOUD), "-e", "tcpcopy_client_range=10.77.1.11"],
    # No pycopy_address anywhere: every role falls back to ansible_host.
    "ansible_host_fallback": [
        "-i",
        str(REPO / "tests" / "ansible" / "preflight" / "ansible_host_only.yml"),
    ],
}


def run_from_elsewhere(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ansible-playbook from a scratch directory (no ansible.cfg applies)."""
    env = tool_env()
    env.pop("ANSIBLE_CONFIG", None)
    env["ANSIBLE_STDOUT_CALLBACK"] = "default"
    with tempfile.TemporaryDirectory(prefix="pd-preflight-") as cwd:
        return subprocess.run(
            ["ansible-playbook", *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def _with_inventory(args: list[str]) -> list[str]:
    return args if "-i" in args else ["-i", str(INVENTORY), *args]


@pytest.fixture(scope="module")
def outcomes(request) -> dict[str, subprocess.CompletedProcess[str]]:
    """The selected cases, run four at a time (each an independent ansible-playbook)."""
    selected = {
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module
        and hasattr(item, "callspec")
        and "case" in item.callspec.params
    }
    cases = {f"bad:{k}": _with_inventory(v[0]) for k, v in BAD_INPUTS.items() if k in selected}
    cases |= {f"good:{k}": _with_inventory(v) for k, v in GOOD_INPUTS.items() if k in selected}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(run_from_elsewhere, [*args, str(PREFLIGHT)])
            for name, args in cases.items()
        }
        return {name: f.result() for name, f in futures.items()}


def _text(result: subprocess.CompletedProcess[str]) -> str:
    # Messages are folded YAML: compare with runs of whitespace made single spaces.
    return " ".join((result.stdout + "\n" + result.stderr).split())


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_preflight_rejects_bad_input_naming_variable_and_fix(outcomes, case):
    result = outcomes[f"bad:{case}"]
    text = _text(result)
    assert result.returncode != 0, f"{case} passed the preflight:\n{result.stdout[-3000:]}"
    for needle in BAD_INPUTS[case][1]:
        assert " ".join(needle.split()) in text, (
            f"{case}: {needle!r} not in output:\n{text[-3000:]}"
        )


@pytest.mark.parametrize("case", sorted(GOOD_INPUTS))
def test_preflight_accepts_a_valid_topology(outcomes, case):
    result = outcomes[f"good:{case}"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    recap = result.stdout[result.stdout.rfind("PLAY RECAP") :]
    assert "failed=0" in recap and "pf-online" in recap and "pf-target" in recap


def test_replay_stops_in_the_preflight_before_any_host_task():
    # Check mode as a second guard: even a wrongly passing preflight changes nothing here.
    result = run_from_elsewhere(
        [
            "-i",
            str(INVENTORY),
            "--check",
            "-e",
            json.dumps({"pycopy_client_addresses": ["192.0.2.0/24"]}),
            str(REPO / "playbooks" / "replay.yml"),
        ]  # fmt: skip
    )
    assert result.returncode != 0
    assert "documentation placeholders" in _text(result)
    plays = [line for line in result.stdout.splitlines() if line.startswith("PLAY [")]
    assert plays and all("Check" in p for p in plays), plays
    # Only what Ansible needs to run its modules may come first: host_prep's
    # interpreter entry point (raw probe; EL8 Python) and its read-only time check.
    allowed = {"Validating arguments against arg spec 'interpreter'", "Probe the release",
               "Choose the interpreter", "Install Python on EL8", "Check the interpreter",
               "Use the interpreter", "Load the platform matrix", "Read the probe",
               "Refuse EL7", "Plan the EL8 Python", "Write the EL8 installation",
               "Refuse a host without a usable Python",
               "Require the site's NTP servers"}  # time_check: an assert, changes nothing
    host_prep = [line for line in result.stdout.splitlines() if line.startswith("TASK [host_prep")]
    assert host_prep, "the preflight's platform check runs host_prep's interpreter step"
    stray = [t for t in host_prep if not any(a in t for a in allowed)]
    assert not stray, stray
    assert "TASK [preflight" in result.stdout


@pytest.mark.parametrize(
    "playbook", ["preflight.yml", "replay.yml", "stop.yml", "check.yml", "bundle.yml"]
)
def test_playbooks_parse_from_any_directory(playbook):
    result = run_from_elsewhere(
        [
            "--syntax-check",
            "-i",
            str(REPO / "inventory" / "lab"),
            str(REPO / "playbooks" / playbook),
        ]
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_ansible_cfg_names_no_inventory():
    cfg = (REPO / "ansible.cfg").read_text()
    assert not [line for line in cfg.splitlines() if line.strip().startswith("inventory")]


def test_every_play_of_replay_is_fatal_on_any_error():
    import yaml

    plays = yaml.safe_load((REPO / "playbooks" / "replay.yml").read_text())
    preflight = yaml.safe_load(PREFLIGHT.read_text())
    check = yaml.safe_load((REPO / "playbooks" / "check.yml").read_text())
    interpreter = yaml.safe_load((REPO / "playbooks" / "interpreter.yml").read_text())
    for play in [p for p in plays + check if "hosts" in p] + preflight + interpreter:
        assert play.get("any_errors_fatal") is True, play["name"]


# -- the address filters, as plain functions ---------------------------------------


@pytest.fixture(scope="module")
def filters():
    path = REPO / "roles" / "preflight" / "filter_plugins" / "preflight_filters.py"
    spec = importlib.util.spec_from_file_location("preflight_filters", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_filters_client_range_and_coverage(filters):
    assert filters.preflight_client_range("10.1.2.x") == ["10.1.2.0/24"]
    assert filters.preflight_client_range("10.1.2.3, 10.1.2.4") == ["10.1.2.3/32", "10.1.2.4/32"]
    assert filters.preflight_client_range("") == []
    assert filters.preflight_covered_by(["10.1.2.0/24"], ["10.1.0.0/16"])
    assert not filters.preflight_covered_by(["10.1.2.0/24"], ["10.1.2.0/25"])
    assert filters.preflight_covered_by("10.1.2.9", ["10.1.2.9"])
    assert not filters.preflight_covered_by("", ["10.0.0.0/8"])


def test_filters_addresses_and_placeholders(filters):
    assert filters.preflight_ipv4("10.1.2.3")
    for bad in ("10.1.2", "10.1.2.256", "host.example", "", "::1"):
        assert not filters.preflight_ipv4(bad), bad
    assert filters.preflight_documentation(["10.0.0.0/8", "192.0.2.5", "198.51.100.0/23"]) == [
        "192.0.2.5",
        "198.51.100.0/23",
    ]
    assert filters.preflight_network("10.1.2.3") == "10.1.2.3/32"
    assert filters.preflight_network("10.1.2.3/24") == "10.1.2.0/24"
    assert filters.preflight_network("nonsense") == ""
