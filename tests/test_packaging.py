"""Packaging: ``maturin build --release --sdist`` gives one abi3 wheel and an sdist; the wheel
installs into a fresh virtual environment (no index, no dependencies) and works there, from a
folder outside the work tree; the metadata is complete.

Slow (a release build, then a venv): about a minute or two here. Set CHATUDP_SKIP_PACKAGING=1 to
leave it out of a quick run.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from email.message import Message
from pathlib import Path
from typing import List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 900
RUN_TIMEOUT = 120

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("CHATUDP_SKIP_PACKAGING", "") not in ("", "0"),
        reason="CHATUDP_SKIP_PACKAGING is set",
    ),
    # A release build of the extension can take longer than the suite's default per-test timeout.
    pytest.mark.timeout(BUILD_TIMEOUT + 2 * RUN_TIMEOUT),
]


class Built(NamedTuple):
    wheel: Path
    sdist: Path
    files: List[Path]


class Venv(NamedTuple):
    python: Path
    workdir: Path  # outside the work tree, so `import chatudp` cannot find python/chatudp


def clean_env() -> "dict[str, str]":
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(args: List[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s; output so far:\n{exc.stdout}\n{exc.stderr}")


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(map(str, proc.args))}: exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if subprocess.run([sys.executable, "-m", "maturin", "--version"], capture_output=True).returncode != 0:
        pytest.skip("maturin is not installed (it is in the 'test' extra: pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("dist")
    proc = run([sys.executable, "-m", "maturin", "build", "--release", "--sdist", "-o", str(out)], ROOT, BUILD_TIMEOUT)
    assert proc.returncode == 0, report(proc)
    files = sorted(out.iterdir())
    wheels = [f for f in files if f.suffix == ".whl"]
    sdists = [f for f in files if f.name.endswith(".tar.gz")]
    assert len(wheels) == 1, f"expected exactly one wheel, got {[f.name for f in files]}"
    assert len(sdists) == 1, f"expected exactly one sdist, got {[f.name for f in files]}"
    return Built(wheels[0], sdists[0], files)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(home / "env")
    python = home / "env" / "bin" / "python"
    proc = run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            str(built.wheel),
        ],
        home,
        RUN_TIMEOUT,
    )
    assert proc.returncode == 0, report(proc)
    workdir = home / "work"
    workdir.mkdir()
    return Venv(python, workdir)


@pytest.fixture(scope="module")
def metadata(built: Built) -> Message:
    with zipfile.ZipFile(built.wheel) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        text = wheel.read(name).decode("utf-8")
    return email.parser.Parser(policy=email.policy.compat32).parsestr(text)


# -- the artefacts ----------------------------------------------------------------------------------


def test_one_abi3_wheel_and_an_sdist(built: Built) -> None:
    assert built.wheel.name.startswith("chatudp-"), built.wheel.name
    assert "-cp39-abi3-" in built.wheel.name, f"not an abi3 wheel for CPython >= 3.9: {built.wheel.name}"
    assert built.sdist.name.startswith("chatudp-"), built.sdist.name
    assert [f.name for f in built.files] == sorted([built.wheel.name, built.sdist.name])


def test_wheel_contents(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
    for needed in ("chatudp/__init__.py", "chatudp/_chat.py", "chatudp/_core.pyi", "chatudp/py.typed"):
        assert needed in names, f"{needed} missing from {built.wheel.name}: {sorted(names)}"
    extensions = [n for n in names if n.startswith("chatudp/_core") and n.endswith(".so")]
    assert extensions == ["chatudp/_core.abi3.so"], sorted(names)
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")], "tests leaked into the wheel"


def test_sdist_contents(built: Built) -> None:
    with tarfile.open(built.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in (
        "pyproject.toml",
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "src/lib.rs",
        "src/py/mod.rs",
        "python/chatudp/__init__.py",
        "python/chatudp/_core.pyi",
        "python/chatudp/py.typed",
        "PKG-INFO",
    ):
        assert needed in names, f"{needed} missing from {built.sdist.name}"
    assert not [n for n in names if n.startswith("target/")], "the build folder leaked into the sdist"


def test_metadata(metadata: Message) -> None:
    assert metadata["Name"] == "chatudp"
    assert metadata["Requires-Python"] == ">=3.9"
    license_ = metadata.get("License-Expression") or metadata.get("License")
    assert license_ == "MIT", dict(metadata.items())
    classifiers = metadata.get_all("Classifier") or []
    for needed in (
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Rust",
        "Typing :: Typed",
    ):
        assert needed in classifiers, f"classifier {needed!r} missing: {classifiers}"
    assert any(c.startswith("Development Status :: ") for c in classifiers), classifiers
    urls = metadata.get_all("Project-URL") or []
    assert urls, "no Project-URL"
    for url in urls:
        label, _, address = url.partition(", ")
        assert label and address.startswith("https://"), url
    assert metadata["Summary"], "no Summary"
    assert metadata.get("Description-Content-Type", "").startswith("text/markdown")
    readme_title = next(line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines() if line.strip())
    assert readme_title in str(metadata.get_payload() or ""), "the README is not the long description"
    # chatudp needs nothing at run time, so `--no-deps` installs are complete: every dependency
    # belongs to an extra.
    for requirement in metadata.get_all("Requires-Dist") or []:
        assert "extra ==" in requirement, f"a run-time dependency: {requirement}"


# -- the installed wheel ------------------------------------------------------------------------


def test_installed_wheel_works_outside_the_work_tree(installed: Venv) -> None:
    script = textwrap.dedent(
        """
        import chatudp, chatudp._core, sys
        from pathlib import Path
        print("location", Path(chatudp._core.__file__).resolve())
        server = chatudp.ChatUdpServer("127.0.0.1", 0)
        server.start()
        client = chatudp.ChatUdpClient(*server.addr)
        client.start()
        client.send("wheel")
        data, addr = client.recv_message(timeout=5)
        print(data.decode())
        client.stop()
        server.stop()
        """
    )
    proc = run([str(installed.python), "-c", script], installed.workdir, RUN_TIMEOUT)
    assert proc.returncode == 0, report(proc)
    assert "Ack b'WHEEL'. from 127.0.0.1:" in proc.stdout, report(proc)
    location = next(line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("location "))
    assert Path(location).is_relative_to(installed.python.parent.parent.resolve()), location
    assert not Path(location).is_relative_to(ROOT), f"the work tree's package was imported: {location}"


def cli_in_wheel(built: Built) -> bool:
    with zipfile.ZipFile(built.wheel) as wheel:
        return "chatudp/cli/__init__.py" in wheel.namelist() and "chatudp/__main__.py" in wheel.namelist()


def test_python_m_chatudp_demo(built: Built, installed: Venv) -> None:
    assert cli_in_wheel(built), "the wheel lacks chatudp/cli/ or chatudp/__main__.py"
    proc = run([str(installed.python), "-m", "chatudp", "demo"], installed.workdir, RUN_TIMEOUT)
    assert proc.returncode == 0, report(proc)
    assert "Ack b'" in proc.stdout + proc.stderr, report(proc)


def test_console_script(built: Built, installed: Venv) -> None:
    assert cli_in_wheel(built), "the wheel lacks chatudp/cli/ or chatudp/__main__.py"
    proc = run([str(installed.python.parent / "chatudp"), "--help"], installed.workdir, RUN_TIMEOUT)
    assert proc.returncode == 0, report(proc)
    assert "demo" in proc.stdout, report(proc)
