"""``example-config`` and ``example-unit``: the files a production install starts from, printed
by the installed program (no source checkout needed).

Owns: reading them from the package (``legacyflo_daemon/data/``: symbolic links to the
checkout's ``config.example.toml`` and ``systemd/*``, so there is one file to edit; the sdist
and the wheel hold their content) and the one production change of the example config.
Decision (relative spool): the example's ``spool = "spool"`` is its default, relative to the
config file's directory; for a config in ``/etc/legacyflo/`` that would be
``/etc/legacyflo/spool``, read-only under the unit's ``ProtectSystem=strict``. So
``example-config --production`` prints the example with ``PRODUCTION_SPOOL``, the directory the
tmpfiles.d file creates and the unit makes writable; everything else stays the default.
Must not: write files (the administrator redirects the output where it belongs).
"""

from __future__ import annotations

PRODUCTION_SPOOL = "/var/spool/legacyflo"
DEFAULT_SPOOL_LINE = 'spool = "spool"'
UNITS = {
    "service": "legacyflo-daemon.service",
    "sysusers": "legacyflo-daemon.sysusers.conf",
    "tmpfiles": "legacyflo-daemon.tmpfiles.conf",
}
# Where each file is installed (printed in --help and the README).
UNIT_TARGETS = {
    "service": "/etc/systemd/system/legacyflo-daemon.service",
    "sysusers": "/etc/sysusers.d/legacyflo-daemon.conf",
    "tmpfiles": "/etc/tmpfiles.d/legacyflo-daemon.conf",
}


def _data(*parts: str) -> str:
    # Imported here: every command imports this module (for --help), only two read files.
    from importlib import resources

    return resources.files("legacyflo_daemon").joinpath("data", *parts).read_text("utf-8")


def example_config(production: bool = False) -> str:
    """``config.example.toml`` as shipped; with ``production``, its spool set to
    ``PRODUCTION_SPOOL``. Raises ``ValueError`` if the example no longer has exactly one
    default spool line (the test suite would then fail, rather than print a wrong config)."""
    text = _data("config.example.toml")
    if not production:
        return text
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.strip() == DEFAULT_SPOOL_LINE]
    if len(found) != 1:
        raise ValueError(f"config.example.toml: expected one line {DEFAULT_SPOOL_LINE!r}")
    (i,) = found
    lines[i] = (
        "# example-config --production: the spool that legacyflo-daemon.tmpfiles.conf creates\n"
        "# and the unit makes writable (a relative path would be under the config's directory).\n"
        f'spool = "{PRODUCTION_SPOOL}"\n'
    )
    return "".join(lines)


def example_unit(kind: str) -> str:
    """The systemd file ``kind`` (a key of ``UNITS``) as shipped."""
    return _data("systemd", UNITS[kind])
