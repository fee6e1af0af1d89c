"""``example-config``/``example-unit``: the installed program prints the checkout's files (the
package holds links to them, and the wheel their content), and the production config puts the
spool where the systemd files make it writable."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from legacyflo_daemon.cli import examples
from legacyflo_daemon.cli import main as cli
from legacyflo_daemon.config.load import load_config

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = {
    "config.example.toml": "legacyflo_daemon/data/config.example.toml",
    **{
        f"systemd/{name}": f"legacyflo_daemon/data/systemd/{name}"
        for name in examples.UNITS.values()
    },
}


@pytest.mark.parametrize(("source", "packaged"), sorted(PACKAGED.items()))
def test_the_packaged_file_is_a_link_to_the_checkouts(source: str, packaged: str) -> None:
    """One file, two names: an edit of the checkout's file is what the program prints."""
    path = ROOT / packaged
    assert path.is_symlink(), f"{packaged} must be a symbolic link to {source}"
    assert path.resolve() == (ROOT / source).resolve()


def test_every_systemd_file_is_packaged() -> None:
    shipped = {p.name for p in (ROOT / "systemd").iterdir() if p.name != "README.md"}
    assert shipped == set(examples.UNITS.values())


def test_example_config_prints_the_example(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.CONFIG_ENV, "/nonexistent/config.toml")  # not needed, not read
    assert cli.main(["example-config"]) == 0
    assert capsys.readouterr().out == (ROOT / "config.example.toml").read_text()


@pytest.mark.parametrize("kind", sorted(examples.UNITS))
def test_example_unit_prints_each_file(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["example-unit", kind]) == 0
    assert capsys.readouterr().out == (ROOT / "systemd" / examples.UNITS[kind]).read_text()


def test_example_unit_defaults_to_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["example-unit"]) == 0
    assert capsys.readouterr().out.startswith("# legacyflo-daemon: spool-driven")


def test_the_production_config_has_the_spool_the_systemd_files_set_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc" / "legacyflo"
    etc.mkdir(parents=True)
    assert cli.main(["example-config", "--production"]) == 0
    production = capsys.readouterr().out
    (etc / "config.toml").write_text(production)
    config = load_config(etc / "config.toml")
    assert config.daemon.spool == Path(examples.PRODUCTION_SPOOL)
    assert config.daemon.state_path == Path(examples.PRODUCTION_SPOOL) / "state.sqlite3"
    # The unit may write there and the tmpfiles.d file creates it.
    assert f"ReadWritePaths={examples.PRODUCTION_SPOOL}\n" in examples.example_unit("service")
    assert f"d     {examples.PRODUCTION_SPOOL} " in examples.example_unit("tmpfiles")
    # Only the spool differs from the defaults; the plain example would put it under /etc.
    (etc / "plain.toml").write_text(examples.example_config())
    plain = load_config(etc / "plain.toml")
    assert plain.daemon.spool == etc / "spool"
    assert replace(config, daemon=replace(config.daemon, spool=etc / "spool"), path=plain.path) == (
        plain
    )


@pytest.mark.slow
def test_the_wheel_holds_the_examples(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources, links kept as links (the checkout stays
    clean), and read it: the links' targets are in it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "config.example.toml"):
        shutil.copy(ROOT / name, src / name)
    for name in ("legacyflo_daemon", "systemd"):
        shutil.copytree(
            ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    assert (src / PACKAGED["config.example.toml"]).is_symlink()
    out = tmp_path / "wheel"
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--disable-pip-version-check", "-w", str(out), str(src)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("legacyflo_daemon-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for source, copy in PACKAGED.items():
            assert zf.read(copy) == (ROOT / source).read_bytes(), copy


def test_the_readme_installs_each_file_where_the_help_says() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Installing for production") :]
    section = section[: section.index("\n## ", 1)]
    for kind, target in examples.UNIT_TARGETS.items():
        assert f"legacyflo-daemon example-unit {kind} > {target}" in section
    exec_start = next(
        line
        for line in examples.example_unit("service").splitlines()
        if line.startswith("ExecStart=")
    )
    program = exec_start.removeprefix("ExecStart=").split()[0]
    assert f"ln -sf /opt/legacyflo-daemon/bin/legacyflo-daemon {program}\n" in section
    assert "example-config --production > /etc/legacyflo/config.toml" in section
    assert "--config /etc/legacyflo/config.toml" in exec_start
