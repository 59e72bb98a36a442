"""install.sh: shellcheck-clean, and a real `--root` install, re-install and uninstall.

The `--root DIR` mode installs into a staging root: a real venv with Herald pip-installed at
DIR/opt/herald, the config, the unit and the link, but no apt, no user and no systemctl.
Installing takes a while (venv, pip), so it happens once per module.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL_SH = REPO / "install.sh"
TIMEOUT_S = 600  # creating a venv and pip-installing numpy & co. can be slow

# The default per-test timeout (pyproject) is too short for the module fixture's install.
pytestmark = pytest.mark.timeout(2 * TIMEOUT_S)


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def install_ok(*args: str) -> str:
    """Run install.sh, fail with its output unless it succeeds; return its stdout."""
    result = run_install(*args)
    assert result.returncode == 0, (
        f"install.sh {' '.join(args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A staging root that `install.sh --root` has installed Herald into."""
    root = tmp_path_factory.mktemp("staging-root")
    install_ok("--root", str(root))
    return root


@pytest.fixture
def staged_copy(staged: Path, tmp_path: Path) -> Path:
    """A copy of the staged install, for a test that removes things from it.

    The copied venv still points into the original (venvs are not relocatable); that does not
    matter to uninstall, which only deletes.
    """
    copy = tmp_path / "root"
    shutil.copytree(staged, copy, symlinks=True)
    return copy


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: it is a dev dependency, run ./install.sh --dev")
    result = subprocess.run(
        [shellcheck, "install.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_root_install_lays_out_a_working_venv(staged: Path) -> None:
    herald = staged / "opt/herald/bin/herald"
    assert herald.is_file()
    assert os.access(herald, os.X_OK)
    result = subprocess.run(
        [str(herald), "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    assert result.stdout.strip() == f"herald {project_version()}"


def test_root_install_links_the_command(staged: Path) -> None:
    link = staged / "usr/local/bin/herald"
    assert link.is_symlink()
    assert link.resolve() == (staged / "opt/herald/bin/herald").resolve()


def test_root_install_copies_config_and_unit(staged: Path) -> None:
    config = staged / "etc/herald/herald.toml"
    unit = staged / "etc/systemd/system/herald.service"
    assert config.read_bytes() == (REPO / "config/herald.toml").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    assert unit.read_bytes() == (REPO / "systemd/herald.service").read_bytes()


def test_reinstall_keeps_an_edited_config(staged: Path) -> None:
    config = staged / "etc/herald/herald.toml"
    shipped = config.read_text()
    edited = shipped + '\n[audio]\ndevice = "hw:CARD=Mine"  # edited by the owner\n'
    config.write_text(edited)
    try:
        out = install_ok("--root", str(staged))
        assert config.read_text() == edited
        assert re.search(r"^herald-install: kept existing .*herald\.toml", out, re.MULTILINE)
        result = subprocess.run(
            [str(staged / "opt/herald/bin/herald"), "--version"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=True,
        )
        assert result.stdout.startswith("herald ")
    finally:
        config.write_text(shipped)  # other tests compare it with the shipped one


def test_uninstall_keeps_the_config(staged_copy: Path) -> None:
    install_ok("--uninstall", "--root", str(staged_copy))
    assert not (staged_copy / "opt/herald").exists()
    assert not (staged_copy / "etc/systemd/system/herald.service").exists()
    assert not (staged_copy / "usr/local/bin/herald").is_symlink()
    assert (staged_copy / "etc/herald/herald.toml").is_file()


def test_uninstall_purge_removes_the_config(staged_copy: Path) -> None:
    install_ok("--uninstall", "--purge", "--root", str(staged_copy))
    assert not (staged_copy / "opt/herald").exists()
    assert not (staged_copy / "etc/systemd/system/herald.service").exists()
    assert not (staged_copy / "usr/local/bin/herald").is_symlink()
    assert not (staged_copy / "etc/herald").exists()


def test_unknown_option_is_a_one_line_usage_error() -> None:
    result = run_install("--frobnicate")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "--frobnicate" in lines[0]


def test_help_lists_every_option() -> None:
    result = run_install("--help")
    assert result.returncode == 0
    for option in ("--with-broker", "--dev", "--uninstall", "--purge", "--root", "--help"):
        assert option in result.stdout
