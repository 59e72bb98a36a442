"""install.sh: shellcheck-clean, and a real `--root` install, re-install and uninstall.

The `--root DIR` mode installs into a staging root: a real venv with Herald pip-installed at
DIR/opt/herald, the config, the unit and the link, but no apt, no user and no systemctl.
A venv made from scratch takes a while (venv, pip-installing numpy & co.), so a test run makes
one, once for all its xdist workers: a fresh install without secrets. The roots with a Deepgram
key and with an SLNG key given as a file are then install.sh runs over a copy of that venv
(install.sh keeps a venv that is there and pip-installs Herald into it again). Each module's
roots are copies of these three, so no worker changes what another one reads.
"""

from __future__ import annotations

import base64
import fcntl
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from herald.config import parse_config
from tests.test_unit_file import verify_unit

REPO = Path(__file__).resolve().parent.parent
INSTALL_SH = REPO / "install.sh"
TIMEOUT_S = 600  # creating a venv and pip-installing numpy & co. can be slow

DEEPGRAM_KEY = "dg-test-0123456789abcdef0123456789abcdef"  # never to be printed
SLNG_KEY = "slng-test-fedcba9876543210fedcba9876543210"  # never to be printed either
SECRETS = (DEEPGRAM_KEY, SLNG_KEY)
SLNG_KEY_FILE_TEXT = f"  \t{SLNG_KEY}  \n\n"  # white space around it is trimmed
CREDENTIALS = Path("etc/herald/credentials")
DROPIN = Path("etc/systemd/system/herald.service.d/credentials.conf")
DEEPGRAM_CREDENTIAL = "LoadCredential=deepgram_api_key:/etc/herald/credentials/deepgram_api_key"
SLNG_CREDENTIAL = "LoadCredential=slng_api_key:/etc/herald/credentials/slng_api_key"
PROMPT = "Deepgram API key (leave empty for the local espeak-ng voice only):"

# The default per-test timeout (pyproject) is too short for the fresh install. No xdist_group:
# the installs are made once per run whatever the worker (see `prepared`), so the tests spread
# over the workers like any others.
pytestmark = pytest.mark.timeout(2 * TIMEOUT_S)


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args],
        stdin=subprocess.DEVNULL,  # not a terminal: install.sh must not ask for a key
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
    assert_no_secret(result)
    return result.stdout


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr, "install.sh printed a key"


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


VENV = Path("opt/herald")
LINK = Path("usr/local/bin/herald")
Prepare = Callable[[str, Callable[[Path], None]], Path]  # `prepared`: a root by name and builder


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def relocate(root: Path, old: Path) -> None:
    """Make a copy of the install at `old` work at `root`, as if install.sh had made it there.

    A venv is not relocatable: its scripts' #! lines, its activate scripts and pyvenv.cfg name
    its path (a copied pip would install into the original), and the command link is absolute.
    """
    old_venv, new_venv = f"{old.resolve()}/{VENV}", f"{root.resolve()}/{VENV}"
    venv = root / VENV
    if venv.is_dir():
        for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if old_venv.encode() in data:
                    path.write_bytes(data.replace(old_venv.encode(), new_venv.encode()))
    link = root / LINK
    if link.is_symlink() and os.readlink(link).startswith(f"{old_venv}/"):
        target = new_venv + os.readlink(link).removeprefix(old_venv)
        link.unlink()
        link.symlink_to(target)


def copy_root(src: Path, dest: Path, *parts: Path) -> Path:
    """A copy of the staging root `src` (only `parts` of it, if given) at `dest`, relocated.

    The files of the venv's lib/ (most of its 150 MB) are hard links to those of `src`: nothing
    edits one in place (pip and Python replace files, uninstall unlinks them). Every other file
    is a copy of its own, as tests and install.sh write there.
    """
    if parts:
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", "--parents", *map(str, parts), str(dest)], cwd=src, check=True)
    else:
        subprocess.run(["cp", "-al", str(src), str(dest)], check=True)
    for directory, subdirectories, files in os.walk(dest):
        if Path(directory) == dest / VENV:
            subdirectories.remove("lib")
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                shutil.copy2(path, path.with_name(f"{name}.copy"))
                path.with_name(f"{name}.copy").replace(path)
    relocate(dest, src)
    return dest


def seed_venv(src: Path, root: Path) -> Path:
    """`root` with the venv and the link of the install at `src` in it, and nothing else.

    install.sh keeps a venv that runs ("venv ... exists") and pip-installs Herald into it again,
    as in a re-install, without making a venv and installing its dependencies from scratch.
    """
    return copy_root(src, root, VENV, LINK)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepare:
    """`prepared(name, build)`: the root `build(root)` made, once in the whole test run.

    The roots are shared by the xdist workers (the run's base temporary directory, which
    pytest removes after a passing run): the first worker to need one builds it, the others
    wait on its lock. Tests only read them, through copies.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # popen-gwN's parent: the run's own, shared by the workers
    shared = base / "install-roots"
    shared.mkdir(exist_ok=True)

    def get(name: str, build: Callable[[Path], None]) -> Path:
        root = shared / name
        with (shared / f"{name}.lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not (shared / f"{name}.done").exists():
                shutil.rmtree(root, ignore_errors=True)  # what a failed attempt left
                build(root)
                (shared / f"{name}.done").touch()
        return root

    return get


@pytest.fixture(scope="session")
def fresh_install(prepared: Prepare) -> Path:
    """An empty staging root that `install.sh --root` has installed Herald into."""

    def build(root: Path) -> None:
        install_ok("--root", str(root))

    return prepared("fresh", build)


@pytest.fixture(scope="session")
def key_install(prepared: Prepare, fresh_install: Path) -> Path:
    """A staging root (only the venv in it) then installed with `--deepgram-key-file`."""

    def build(root: Path) -> None:
        key = write_secret(root.parent / "key-install.key", DEEPGRAM_KEY + "\n")
        install_ok("--root", str(seed_venv(fresh_install, root)), "--deepgram-key-file", str(key))

    return prepared("key", build)


@pytest.fixture(scope="session")
def slng_install(prepared: Prepare, fresh_install: Path) -> Path:
    """A staging root (only the venv in it) then installed with `--slng-key-file`."""

    def build(root: Path) -> None:
        key = write_secret(root.parent / "slng-install.key", SLNG_KEY_FILE_TEXT)
        install_ok("--root", str(seed_venv(fresh_install, root)), "--slng-key-file", str(key))

    return prepared("slng", build)


def own_copy(
    request: pytest.FixtureRequest, factory: pytest.TempPathFactory, name: str, src: Path
) -> Iterator[Path]:
    """This module's copy of `src` on this worker, removed after it unless a test failed.

    (xdist may run the module's tests among others', and so make it more than once.)"""
    failed = request.session.testsfailed
    root = copy_root(src, factory.mktemp(name) / "root")
    yield root
    if request.session.testsfailed == failed:
        shutil.rmtree(root.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def staged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fresh_install: Path
) -> Iterator[Path]:
    """A staging root that `install.sh --root` has installed Herald into."""
    yield from own_copy(request, tmp_path_factory, "staging-root", fresh_install)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_secret(tmp_path_factory.mktemp("secrets") / "deepgram.key", DEEPGRAM_KEY + "\n")


@pytest.fixture(scope="module")
def staged_with_key(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, key_install: Path
) -> Iterator[Path]:
    """A staging root installed with `--deepgram-key-file`."""
    yield from own_copy(request, tmp_path_factory, "staging-root-key", key_install)


@pytest.fixture(scope="module")
def slng_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_secret(tmp_path_factory.mktemp("slng-secrets") / "slng.key", SLNG_KEY_FILE_TEXT)


@pytest.fixture(scope="module")
def staged_with_slng(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, slng_install: Path
) -> Iterator[Path]:
    """A staging root installed with `--slng-key-file` (and no Deepgram key)."""
    yield from own_copy(request, tmp_path_factory, "staging-root-slng", slng_install)


def credential_lines(root: Path) -> list[str]:
    dropin = (root / DROPIN).read_text()
    return [line for line in dropin.splitlines() if line.startswith("LoadCredential")]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def engines(config: Path) -> list[str]:
    with config.open("rb") as f:
        data = tomllib.load(f)
    parse_config(data, str(config))  # Herald accepts it
    found: list[str] = data["voice"]["engines"]
    return found


@pytest.fixture
def staged_copy(staged: Path, tmp_path: Path) -> Path:
    """A copy of the staged install, for a test that removes things from it."""
    return copy_root(staged, tmp_path / "root")


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: it is a dev dependency, run ./install.sh --dev")
    result = subprocess.run(
        [shellcheck, "install.sh", "tests/debian13/env.sh"],
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


def test_root_install_without_a_key_stores_no_credential(staged: Path) -> None:
    credentials = staged / CREDENTIALS
    assert credentials.is_dir()
    assert mode(credentials) == 0o700
    assert list(credentials.iterdir()) == []
    assert not (staged / DROPIN).exists()
    assert not (staged / DROPIN).parent.exists()
    assert engines(staged / "etc/herald/herald.toml") == ["espeak"]


def test_key_file_becomes_a_root_only_credential(staged_with_key: Path) -> None:
    credentials = staged_with_key / CREDENTIALS
    assert mode(credentials) == 0o700
    assert sorted(p.name for p in credentials.iterdir()) == ["deepgram_api_key"]
    key = credentials / "deepgram_api_key"
    assert mode(key) == 0o600
    assert key.read_text().strip() == DEEPGRAM_KEY


def test_key_install_writes_the_credentials_drop_in(staged_with_key: Path, tmp_path: Path) -> None:
    dropin = (staged_with_key / DROPIN).read_text()
    loads = [line for line in dropin.splitlines() if line.startswith("LoadCredential")]
    assert loads == [DEEPGRAM_CREDENTIAL]
    assert mode(staged_with_key / DROPIN) == 0o644
    unit = (staged_with_key / "etc/systemd/system/herald.service").read_text()
    assert verify_unit(unit, tmp_path, {"credentials.conf": dropin}) == ""


def assert_only_the_engines_changed(config: Path, first: str) -> None:
    """The written config is the shipped one but for `engines`, which puts `first` first."""
    assert engines(config) == [first, "espeak"]
    shipped = (REPO / "config/herald.toml").read_text().splitlines()
    written = config.read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, written, strict=True) if a != b]
    assert len(changed) == 1, changed
    assert changed[0][1].startswith(f'engines = ["{first}", "espeak"]  # ')


def test_key_install_creates_a_config_with_deepgram_first(staged_with_key: Path) -> None:
    assert_only_the_engines_changed(staged_with_key / "etc/herald/herald.toml", "deepgram")


def test_reinstall_rotates_the_key_and_adds_the_mqtt_password(
    staged_with_key: Path, tmp_path: Path
) -> None:
    key = staged_with_key / CREDENTIALS / "deepgram_api_key"
    password = staged_with_key / CREDENTIALS / "mqtt_password"
    config = staged_with_key / "etc/herald/herald.toml"
    dropin = staged_with_key / DROPIN
    shipped_dropin = dropin.read_text()
    config.write_text(config.read_text() + "# edited by the owner\n")
    new_key_file = tmp_path / "new.key"
    new_key_file.write_text("dg-rotated-key")
    password_file = tmp_path / "mqtt.password"
    password_file.write_text("broker-pass-word\n")
    args = ("--root", str(staged_with_key), "--deepgram-key-file", str(new_key_file))
    try:
        out = install_ok(*args, "--mqtt-password-file", str(password_file))
        assert "dg-rotated-key" not in out
        assert "broker-pass-word" not in out
        assert key.read_text().strip() == "dg-rotated-key"
        assert password.read_text().strip() == "broker-pass-word"
        assert mode(key) == mode(password) == 0o600
        assert config.read_text().endswith("# edited by the owner\n")  # never edited
        loads = [x for x in dropin.read_text().splitlines() if x.startswith("LoadCredential")]
        assert loads == [
            DEEPGRAM_CREDENTIAL,
            "LoadCredential=mqtt_password:/etc/herald/credentials/mqtt_password",
        ]
        assert "rotate it: sudo ./install.sh --deepgram-key-file NEWFILE" in out
        again = install_ok(*args)
        assert re.search(r"^herald-install: credential deepgram_api_key .* up to date", again, re.M)
        assert re.search(r"^herald-install: drop-in .* is up to date", again, re.M)
    finally:
        key.write_text(DEEPGRAM_KEY)
        password.unlink(missing_ok=True)
        dropin.write_text(shipped_dropin)
        config.write_text(config.read_text().removesuffix("# edited by the owner\n"))


def test_unusable_key_files_are_refused(staged_copy: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    for path, reason in ((empty, "is empty"), (tmp_path / "missing.key", "does not exist")):
        result = run_install("--root", str(staged_copy), "--deepgram-key-file", str(path))
        assert result.returncode == 1
        assert reason in result.stderr
        assert not (staged_copy / CREDENTIALS / "deepgram_api_key").exists()


def test_a_terminal_install_asks_once_without_echo(tmp_path: Path, fresh_install: Path) -> None:
    root = seed_venv(fresh_install, tmp_path / "root")  # no config, no credentials
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            ["bash", str(INSTALL_SH), "--root", str(root)],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        asked = b""
        deadline = time.monotonic() + 30
        while PROMPT.encode() not in asked and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1)[0]:
                asked += os.read(proc.stderr.fileno(), 4096)
        assert PROMPT.encode() in asked, asked
        os.write(controller, DEEPGRAM_KEY.encode() + b"\n")
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        echoed = b""
        while select.select([controller], [], [], 0.1)[0]:
            echoed += os.read(controller, 4096)
    finally:
        os.close(controller)
        os.close(terminal)
    output = (asked + stderr + stdout).decode()
    assert proc.returncode == 0, output
    assert output.count(PROMPT) == 1
    assert DEEPGRAM_KEY.encode() not in echoed + asked + stdout + stderr
    key = root / CREDENTIALS / "deepgram_api_key"
    assert key.read_text().strip() == DEEPGRAM_KEY
    assert mode(key) == 0o600
    assert engines(root / "etc/herald/herald.toml") == ["deepgram", "espeak"]
    assert DEEPGRAM_CREDENTIAL in (root / DROPIN).read_text()


def test_uninstall_removes_the_drop_in_and_keeps_the_credentials(
    staged_with_key: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "root"
    copy_root(staged_with_key, copy)
    install_ok("--uninstall", "--root", str(copy))
    assert not (copy / DROPIN).exists()
    assert not (copy / DROPIN).parent.exists()
    assert (copy / CREDENTIALS / "deepgram_api_key").is_file()
    install_ok("--uninstall", "--purge", "--root", str(copy))
    assert not (copy / "etc/herald").exists()


def test_slng_key_file_becomes_a_root_only_credential(staged_with_slng: Path) -> None:
    credentials = staged_with_slng / CREDENTIALS
    assert mode(credentials) == 0o700
    assert sorted(p.name for p in credentials.iterdir()) == ["slng_api_key"]
    key = credentials / "slng_api_key"
    assert mode(key) == 0o600
    assert key.read_text() == SLNG_KEY  # trimmed, no newline


def test_slng_install_writes_the_drop_in(staged_with_slng: Path, tmp_path: Path) -> None:
    assert credential_lines(staged_with_slng) == [SLNG_CREDENTIAL]
    assert mode(staged_with_slng / DROPIN) == 0o644
    unit = (staged_with_slng / "etc/systemd/system/herald.service").read_text()
    dropin = (staged_with_slng / DROPIN).read_text()
    assert verify_unit(unit, tmp_path, {"credentials.conf": dropin}) == ""


def test_slng_install_creates_a_config_with_slng_first(staged_with_slng: Path) -> None:
    assert_only_the_engines_changed(staged_with_slng / "etc/herald/herald.toml", "slng")


def test_both_keys_put_deepgram_first_then_slng(
    staged_with_slng: Path, key_file: Path, tmp_path: Path
) -> None:
    """Deepgram, the default cloud voice, comes first; SLNG is the next voice before espeak-ng."""
    root = staged_with_slng
    config = root / "etc/herald/herald.toml"
    dropin = root / DROPIN
    deepgram = root / CREDENTIALS / "deepgram_api_key"
    kept_config, kept_dropin = config.read_text(), dropin.read_text()
    config.unlink()  # so that this run writes a fresh one
    try:
        result = run_install("--root", str(root), "--deepgram-key-file", str(key_file))
        assert result.returncode == 0, result.stdout + result.stderr
        assert_no_secret(result)
        assert engines(config) == ["deepgram", "slng", "espeak"]
        assert credential_lines(root) == [DEEPGRAM_CREDENTIAL, SLNG_CREDENTIAL]
        assert (root / CREDENTIALS / "slng_api_key").read_text() == SLNG_KEY  # kept
        assert mode(deepgram) == 0o600
        unit = (root / "etc/systemd/system/herald.service").read_text()
        assert verify_unit(unit, tmp_path, {"credentials.conf": dropin.read_text()}) == ""
        assert "rotate it: sudo ./install.sh --deepgram-key-file NEWFILE" in result.stdout
        assert "rotate it: sudo ./install.sh --slng-key-file NEWFILE" in result.stdout
    finally:
        deepgram.unlink(missing_ok=True)
        config.write_text(kept_config)
        dropin.write_text(kept_dropin)


def test_an_existing_config_is_not_edited_for_a_new_slng_key(
    staged_with_key: Path, slng_key_file: Path
) -> None:
    root = staged_with_key
    config = root / "etc/herald/herald.toml"
    dropin = root / DROPIN
    slng = root / CREDENTIALS / "slng_api_key"
    kept_config, kept_dropin = config.read_text(), dropin.read_text()
    try:
        out = install_ok("--root", str(root), "--slng-key-file", str(slng_key_file))
        assert config.read_text() == kept_config
        assert engines(config) == ["deepgram", "espeak"]
        assert slng.read_text() == SLNG_KEY
        assert mode(slng) == 0o600
        assert credential_lines(root) == [DEEPGRAM_CREDENTIAL, SLNG_CREDENTIAL]
        assert re.search(
            r"^herald-install: .*herald\.toml does not use the stored SLNG key: "
            r'set engines = \["deepgram", "slng", "espeak"\] under \[voice\]$',
            out,
            re.MULTILINE,
        ), out
    finally:
        slng.unlink(missing_ok=True)
        dropin.write_text(kept_dropin)


def test_a_terminal_install_with_an_slng_key_stored_does_not_ask(staged_with_slng: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"\n")  # an answer waiting, should it ask after all
        proc = subprocess.run(
            ["bash", str(INSTALL_SH), "--root", str(staged_with_slng)],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert PROMPT not in proc.stdout + proc.stderr
    assert_no_secret(proc)
    assert (staged_with_slng / CREDENTIALS / "slng_api_key").read_text() == SLNG_KEY


def unreadable_run(path: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """install.sh with `--slng-key-file PATH` that it cannot read (as nobody, when we are root).

    It runs a copy beside PATH: nobody may not reach the checkout (under /root, say); the key
    is refused before install.sh needs anything else from it."""
    script = path.parent / "install.sh"
    shutil.copy(INSTALL_SH, script)
    script.chmod(0o755)
    command = ["bash", str(script), "--root", str(root), "--slng-key-file", str(path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: no file is unreadable")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_unusable_slng_key_files_are_refused_in_one_line(staged_copy: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text(" \n\t\n")
    two_lines = tmp_path / "two-lines.key"
    two_lines.write_text(f"{SLNG_KEY}\nsecond-line-{SLNG_KEY}\n")
    cases = [
        (["--slng-key-file", str(empty)], "is empty"),
        ([f"--slng-key-file={two_lines}"], "has more than one line"),
        (["--slng-key-file", str(tmp_path / "missing.key")], "does not exist"),
        (["--slng-key-file", str(tmp_path)], "is a directory"),
    ]
    results = [(run_install("--root", str(staged_copy), *args), why) for args, why in cases]
    # A file the installer cannot read: outside pytest's private temporary directory, so that
    # nobody (the user it runs as, when the tests run as root) reaches it.
    with tempfile.TemporaryDirectory() as public:
        Path(public).chmod(0o755)
        unreadable = Path(public) / "unreadable.key"
        unreadable.write_text(SLNG_KEY)
        unreadable.chmod(0)
        results.append((unreadable_run(unreadable, staged_copy), "cannot read SLNG key file"))
    for result, why in results:
        assert result.returncode == 1, (why, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (why, result.stderr)
        assert lines[0].startswith("herald-install: error: ")
        assert why in lines[0]
        assert_no_secret(result)
        assert not (staged_copy / CREDENTIALS / "slng_api_key").exists()


def test_uninstall_keeps_the_slng_key_and_purge_removes_it(
    staged_with_slng: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "root"
    copy_root(staged_with_slng, copy)
    install_ok("--uninstall", "--root", str(copy))
    assert not (copy / DROPIN).exists()
    assert not (copy / DROPIN).parent.exists()
    key = copy / CREDENTIALS / "slng_api_key"
    assert key.read_text() == SLNG_KEY
    assert mode(key) == 0o600
    install_ok("--uninstall", "--purge", "--root", str(copy))
    assert not key.exists()
    assert not (copy / "etc/herald").exists()


def test_secret_options_go_with_an_install_only() -> None:
    for args in (("--uninstall",), ("--dev",)):
        for option in ("--deepgram-key-file", "--slng-key-file"):
            result = run_install(*args, option, "/dev/null")
            assert result.returncode == 2, result.stderr
            assert option in result.stderr
    result = run_install("--slng-key-file")
    assert result.returncode == 2
    assert "--slng-key-file needs a file" in result.stderr
    result = run_install("--mqtt-password-file")
    assert result.returncode == 2
    assert "needs a file" in result.stderr


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
    for option in (
        "--with-broker",
        "--dev",
        "--uninstall",
        "--purge",
        "--root",
        "--deepgram-key-file",
        "--slng-key-file",
        "--mqtt-password-file",
        "--help",
    ):
        assert option in result.stdout


def test_esphome_key_is_made_once_stored_for_the_service_and_never_printed(
    staged_copy: Path,
) -> None:
    """`--esphome-key`: a random key (base64 of 32 bytes, as ESPHome's), a root-only
    credential the drop-in loads, the API turned on in a config this run writes, the file it
    is in named (Home Assistant asks for the key) and the key itself never printed; again, the
    same key is kept."""
    root = staged_copy
    config = root / "etc/herald/herald.toml"
    config.unlink()  # so that this run writes a fresh one
    out = install_ok("--root", str(root), "--esphome-key")
    key_file = root / CREDENTIALS / "esphome_key"
    key = key_file.read_text().strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert key not in out
    assert mode(key_file) == 0o600
    assert credential_lines(root) == [
        "LoadCredential=esphome_key:/etc/herald/credentials/esphome_key"
    ]
    assert "sudo cat /etc/herald/credentials/esphome_key" in out
    settings = tomllib.loads(config.read_text())
    assert settings["esphome"]["enabled"] is True
    assert settings["mqtt"] == tomllib.loads((REPO / "config/herald.toml").read_text())["mqtt"]
    again = install_ok("--root", str(root), "--esphome-key")
    assert key_file.read_text().strip() == key
    assert "kept the ESPHome encryption key" in again
    assert "set [esphome] enabled = true" in again  # the config existed: left as it is
