"""Running deploy/ansible from the tests: ansible-playbook with the project's roles and
filter plugins, output captured, PLAY RECAP parsed. One definition of how the tests call
Ansible (the lint test, the agent role test and the rollout test share it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
TEST_PLAYS = Path(__file__).resolve().parent / "ansible_plays"
VENV_BIN = Path(sys.executable).parent


def ansible_env(tmp: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    })
    return env


def local_inventory(path: Path, hosts: Dict[str, Dict[str, str]]) -> Path:
    """An INI inventory of local-connection hosts, each with its own variables."""
    lines = ["[test_hosts]"]
    for name, hv in hosts.items():
        hv = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, **hv}
        lines.append(name + " " + " ".join(f"{k}={json.dumps(v) if ' ' in str(v) else v}"
                                           for k, v in hv.items()))
    path.write_text("\n".join(lines) + "\n")
    return path


def playbook(tmp: Path, play: Path, inventory: Path, extra: Optional[dict] = None,
             args: Optional[List[str]] = None, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(play)]
    if extra is not None:
        vars_file = tmp / f"vars-{len(list(tmp.glob('vars-*.json')))}.json"
        vars_file.write_text(json.dumps(extra))
        cmd += ["-e", f"@{vars_file}"]
    cmd += args or []
    return subprocess.run(cmd, cwd=ANSIBLE_DIR, env=ansible_env(tmp), capture_output=True,
                          text=True, timeout=timeout)


_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                    re.M)


def recap(out: str) -> Dict[str, Dict[str, int]]:
    """host -> {ok, changed, unreachable, failed} from the PLAY RECAP."""
    tail = out[out.rindex("PLAY RECAP"):] if "PLAY RECAP" in out else ""
    return {m.group(1): dict(zip(("ok", "changed", "unreachable", "failed"),
                                 map(int, m.groups()[1:]))) for m in _RECAP.finditer(tail)}


def build_wheel(dest: Path) -> Path:
    """The wheel the controller ships, built from this repository (no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dest), str(REPO)],
                   check=True, capture_output=True, text=True, cwd=REPO)
    wheels = sorted(dest.glob("foliowatch-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
