"""The foliowatch_agent role converged for real on this machine (connection local): the
agent runs as the role's dedicated user with the templated configuration and publishes
real samples to the real Kafka broker; a second run changes nothing; a bad variable fails
in argument validation and a bad value in `foliowatch agent --check`, both before
anything changes; state=absent leaves nothing behind.

systemd is not PID 1 here, so the role runs with foliowatch_agent_service_manager=none
and the test starts the installed unit's ExecStart line itself, as the unit's User= with
the unit's EnvironmentFile= loaded. One converge is shared by the module's tests (in
file order; the last one uninstalls)."""

from __future__ import annotations

import json
import pwd
import grp
import shlex
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from ansible_run import ANSIBLE_DIR, TEST_PLAYS, build_wheel, local_inventory, playbook, recap
from foliowatch.shell.services import create_topics, free_port, stop_pid

CONVERGE = TEST_PLAYS / "agent-converge.yml"
# ansible-playbook runs five times (a pip install from PyPI in the first)
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1800)]


def unit_fields(unit_text: str, key: str) -> list:
    """Every value of ``key`` in the unit, in order."""
    return [line.split("=", 1)[1] for line in unit_text.splitlines() if line.startswith(key + "=")]


def unit_field(unit_text: str, key: str) -> str:
    values = unit_fields(unit_text, key)
    assert len(values) == 1, (key, values)
    return values[0]


def env_file(path: Path) -> dict:
    """systemd's EnvironmentFile= lines as the role writes them (KEY='value')."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = shlex.split(value)[0] if value else ""
    return env


def _setpriv_caps(text: str) -> list:
    """setpriv's arguments for the unit's CapabilityBoundingSet= and AmbientCapabilities=
    (systemd.exec(5): the ambient set is also raised in the inheritable set)."""
    def names(key):
        return [c.lower().removeprefix("cap_") for c in unit_field(text, key).split()]
    args = ["--bounding-set=" + ",".join(["-all"] + ["+" + c for c in names("CapabilityBoundingSet")])]
    ambient = names("AmbientCapabilities")
    if ambient:
        raised = ",".join(["-all"] + ["+" + c for c in ambient])
        args += ["--inh-caps=" + raised, "--ambient-caps=" + raised]
    return args


def start_unit_command(unit: Path, log: Path) -> subprocess.Popen:
    """What systemd would do with the unit: each ExecStartPre= in order ("+": with full
    privileges, "-": a failure ignored), then ExecStart=, as User=/Group= with the
    EnvironmentFile= loaded (the leading '-' makes a missing file acceptable) and the
    unit's capability sets."""
    text = unit.read_text()
    user, group = unit_field(text, "User"), unit_field(text, "Group")
    envfile = Path(unit_field(text, "EnvironmentFile").lstrip("-"))
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if envfile.exists():
        env.update(env_file(envfile))
    as_user = ["setpriv", "--reuid", user, "--regid", group, "--init-groups"]
    as_user += _setpriv_caps(text) + ["--"]
    with log.open("ab") as out:
        for line in unit_fields(text, "ExecStartPre"):
            prefixes = line[:len(line) - len(line.lstrip("-+"))]
            argv = shlex.split(line[len(prefixes):])
            pre = subprocess.run(argv if "+" in prefixes else as_user + argv, env=env, cwd="/",
                                 stdout=out, stderr=subprocess.STDOUT, timeout=120)
            assert pre.returncode == 0 or "-" in prefixes, (line, log.read_text()[-3000:])
    return subprocess.Popen(as_user + shlex.split(unit_field(text, "ExecStart")), env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd="/")


def proc_status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def proc_uid(pid: int) -> int:
    return int(proc_status(pid, "Uid").split()[0])


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def consume(bootstrap: str, topic: str, want: int, timeout_s: float) -> list:
    """The first ``want`` records of ``topic``, read by kcat (an independent client)."""
    try:
        out = subprocess.run(["kcat", "-C", "-q", "-b", bootstrap, "-t", topic, "-o", "beginning",
                              "-c", str(want)], capture_output=True, text=True,
                             timeout=timeout_s).stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def agent_host(tmp_path_factory, kafka, tracefs):
    tmp = tmp_path_factory.mktemp("ansible-agent")
    tag = uuid.uuid4().hex[:8]
    # Not under the pytest temp folder (0700 root): the agent's user must reach its venv.
    root = Path(f"/var/tmp/foliowatch-role-test-{tag}")
    root.mkdir(mode=0o755)
    (root / "units").mkdir()
    topic = f"test.ansible.{tag}"
    create_topics(kafka.bootstrap, topic)
    vars_ = {
        "foliowatch_agent_wheel": str(build_wheel(tmp / "dist")),
        "foliowatch_agent_user": f"fwagent{tag[:6]}",
        "foliowatch_agent_group": f"fwagent{tag[:6]}",
        "foliowatch_agent_venv": str(root / "venv"),
        "foliowatch_agent_config_dir": str(root / "etc"),
        "foliowatch_agent_state_dir": str(root / "state"),
        "foliowatch_agent_unit_dir": str(root / "units"),
        "foliowatch_agent_service_name": f"foliowatch-agent-{tag}",
        "foliowatch_agent_service_manager": "none",
        "foliowatch_agent_fleet": f"ansible-{tag}",
        "foliowatch_agent_role": "role-test",
        "foliowatch_agent_interval_s": 1.0,
        "foliowatch_agent_mounts": ["/"],
        "foliowatch_agent_kafka_bootstrap": [kafka.bootstrap],
        "foliowatch_agent_kafka_topic": topic,
        "foliowatch_agent_kafka_send_timeout_s": 5.0,
        "foliowatch_agent_kafka_latency_budget_s": 0.0,   # each sample sent at once
        "foliowatch_agent_metrics_listen": f"127.0.0.1:{free_port()}",
        # the real kernel's tracepoints, counted by the unprivileged agent
        "foliowatch_agent_tracepoints_enabled": True,
    }
    inventory = local_inventory(tmp / "hosts", {"localhost": {}})
    first = playbook(tmp, CONVERGE, inventory, vars_)
    state = {"tmp": tmp, "root": root, "vars": vars_, "inventory": inventory, "first": first,
             "topic": topic, "bootstrap": kafka.bootstrap, "agent": None}
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    unit = root / "units" / f"{vars_['foliowatch_agent_service_name']}.service"
    state["unit"] = unit
    state["agent"] = start_unit_command(unit, tmp / "agent.log")
    yield state
    if state["agent"] is not None and state["agent"].poll() is None:
        stop_pid(state["agent"].pid)
    user = vars_["foliowatch_agent_user"]
    if user_exists(user):      # a test failed before the uninstall: leave the machine clean
        subprocess.run(["userdel", user], capture_output=True)
    try:
        grp.getgrnam(vars_["foliowatch_agent_group"])
        subprocess.run(["groupdel", vars_["foliowatch_agent_group"]], capture_output=True)
    except KeyError:
        pass
    shutil.rmtree(root, ignore_errors=True)


def test_converged_agent_runs_as_its_user_with_the_templated_config_and_publishes_to_kafka(agent_host):
    v, root = agent_host["vars"], agent_host["root"]
    assert recap(agent_host["first"].stdout)["localhost"]["failed"] == 0
    user = pwd.getpwnam(v["foliowatch_agent_user"])
    assert user.pw_shell == "/usr/sbin/nologin"
    config = root / "etc" / "agent.toml"
    import tomllib
    cfg = tomllib.loads(config.read_text())["agent"]
    assert cfg["fleet"] == v["foliowatch_agent_fleet"] and cfg["interval_s"] == 1.0
    assert cfg["kafka"]["bootstrap"] == [agent_host["bootstrap"]]
    assert cfg["kafka"]["topic"] == agent_host["topic"]
    assert cfg["kafka"]["latency_budget_s"] == 0.0
    assert cfg["metrics"]["listen"] == v["foliowatch_agent_metrics_listen"]
    # the state folder is the agent's alone; the config is root's, readable by the group
    st = (root / "state").stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (user.pw_uid, "0o700")
    cs = config.stat()
    assert (cs.st_uid, cs.st_gid, oct(cs.st_mode & 0o777)) == (0, user.pw_gid, "0o640")
    es = (root / "etc" / "agent.env").stat()
    assert (es.st_uid, oct(es.st_mode & 0o777)) == (0, "0o600")
    unit = agent_host["unit"].read_text()
    assert unit_field(unit, "User") == v["foliowatch_agent_user"]
    assert unit_field(unit, "ReadWritePaths") == v["foliowatch_agent_state_dir"]
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert hardening in unit.splitlines()
    # the tracepoint collector: CAP_PERFMON and no other capability; the events' files
    # copied from root-only tracefs by a privileged ExecStartPre, before --check
    copy = root / "state" / "tracefs-events"
    assert cfg["tracepoints"]["enabled"] is True and cfg["tracepoints"]["tracefs"] == str(copy)
    assert unit_field(unit, "CapabilityBoundingSet") == "CAP_PERFMON"
    assert unit_field(unit, "AmbientCapabilities") == "CAP_PERFMON"
    assert unit_fields(unit, "ExecStartPre")[0] == (
        f"-+{v['foliowatch_agent_venv']}/bin/foliowatch agent --export-tracefs-events {copy}")
    # and systemd's own parser accepts the unit as installed (prefixes, capabilities, paths)
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(agent_host["unit"])],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    agent = agent_host["agent"]
    records = consume(agent_host["bootstrap"], agent_host["topic"], want=3, timeout_s=90)
    log = (agent_host["tmp"] / "agent.log").read_text(errors="replace")
    assert agent.poll() is None, log[-3000:]
    assert len(records) >= 3, log[-3000:]
    assert all(r["labels"]["fleet"] == v["foliowatch_agent_fleet"] for r in records)
    assert all(r["labels"]["role"] == "role-test" for r in records)
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    # the running process is the dedicated user, and it wrote its spool in the state folder
    assert proc_uid(agent.pid) == user.pw_uid
    assert (root / "state" / "state.json").exists()
    assert (root / "state" / "state.json").stat().st_uid == user.pw_uid
    # it counts the kernel's tracepoints with CAP_PERFMON as its only capability
    perfmon = f"{1 << 38:016x}"      # CAP_PERFMON, include/uapi/linux/capability.h
    assert (proc_status(agent.pid, "CapEff"), proc_status(agent.pid, "CapBnd")) == (perfmon, perfmon)
    for r in records:
        assert {"tp_pagecache_folios_order_0", "tp_compact_try_order_8_up",
                "tp_direct_reclaim"} <= set(r["counters"]), sorted(r["counters"])
    metrics = urllib.request.urlopen(f"http://{v['foliowatch_agent_metrics_listen']}/metrics",
                                     timeout=10).read().decode()
    assert "\nfoliowatch_agent_tracepoints_enabled 1.0\n" in metrics, metrics[-2000:]
    assert all(f.stat().st_uid == 0 for f in copy.rglob("*"))


def test_second_run_changes_nothing(agent_host):
    again = playbook(agent_host["tmp"], CONVERGE, agent_host["inventory"], agent_host["vars"])
    assert again.returncode == 0, again.stdout[-6000:]
    assert recap(again.stdout)["localhost"]["changed"] == 0, again.stdout[-6000:]


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted((root / "etc").rglob("*")) + sorted((root / "units").rglob("*"))}


def test_wrong_variable_fails_in_argument_validation_before_anything_changes(agent_host):
    before = _snapshot(agent_host["root"])
    bad = dict(agent_host["vars"], foliowatch_agent_interval_s="every ten seconds",
               foliowatch_agent_service_manager="upstart",
               foliowatch_agent_tracepoints_pagecache_devices="mounted")
    run = playbook(agent_host["tmp"], CONVERGE, agent_host["inventory"], bad)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "Validating arguments against arg spec" in out, out[-4000:]
    assert "foliowatch_agent_interval_s" in out and "foliowatch_agent_service_manager" in out, out[-4000:]
    assert "upstart" in out
    assert "foliowatch_agent_tracepoints_pagecache_devices" in out and "mounted" in out, out[-4000:]
    assert recap(run.stdout)["localhost"]["changed"] == 0
    assert _snapshot(agent_host["root"]) == before
    assert agent_host["agent"].poll() is None


def test_bad_config_value_fails_agent_check_and_keeps_the_running_config(agent_host):
    config = agent_host["root"] / "etc" / "agent.toml"
    before = config.read_bytes()
    # type-correct for the argument spec, wrong for the agent: only --check can tell
    bad = dict(agent_host["vars"], foliowatch_agent_metrics_listen="localhost:99999")
    run = playbook(agent_host["tmp"], CONVERGE, agent_host["inventory"], bad)
    assert run.returncode != 0
    assert "config agent.metrics.listen: expected host:port, got 'localhost:99999'" in run.stdout, \
        run.stdout[-4000:]
    assert config.read_bytes() == before
    assert agent_host["agent"].poll() is None


def test_state_absent_leaves_nothing_behind(agent_host):
    v, root = agent_host["vars"], agent_host["root"]
    # with service manager "none" the role cannot stop the agent: whoever started it does
    stop_pid(agent_host["agent"].pid)
    run = playbook(agent_host["tmp"], CONVERGE, agent_host["inventory"],
                   dict(v, foliowatch_agent_state="absent"))
    assert run.returncode == 0, run.stdout[-6000:]
    assert not user_exists(v["foliowatch_agent_user"])
    with pytest.raises(KeyError):
        grp.getgrnam(v["foliowatch_agent_group"])
    for path in ("venv", "etc", "state"):
        assert not (root / path).exists(), path
    assert list((root / "units").iterdir()) == []
    again = playbook(agent_host["tmp"], CONVERGE, agent_host["inventory"],
                     dict(v, foliowatch_agent_state="absent"))
    assert again.returncode == 0 and recap(again.stdout)["localhost"]["changed"] == 0, again.stdout[-4000:]


def test_the_roles_defaults_are_the_agents_defaults():
    """A role variable that sets an agent key defaults to the agent's own default: a
    default changed in the agent (agent/config.py) and not in the role would silently
    keep every host deployed with Ansible on the old value. Keys the role leaves to the
    agent (no variable) are named here."""
    import yaml

    from foliowatch.agent.config import DEFAULTS
    role = yaml.safe_load((ANSIBLE_DIR / "roles" / "foliowatch_agent" / "defaults" / "main.yml")
                          .read_text())
    # probe.user: the agent's own user; tracepoints.tracefs: the unit's copy of tracefs
    left_to_the_agent = {"agent.kafka.sasl_password_file", "agent.probe.user",
                         "agent.tracepoints.tracefs"}
    for key, default in DEFAULTS.items():
        var = "foliowatch_" + key.replace(".", "_")
        if key in left_to_the_agent:
            assert var not in role, f"{var} is in the role now: drop {key} from this list"
            continue
        assert var in role, f"{key}: no role variable {var} (add one, or list the key here)"
        assert role[var] == default, f"{var}: role default {role[var]!r}, agent's {default!r}"
