"""The Makefile's installer (synth/uv_install.py): uv gets the package sources pip is configured
with, read from the real `pip config list`, so `make` installs what pip would."""

from __future__ import annotations

import subprocess
import sys

from synth.uv_install import pip_config, uv_command


def test_pip_variables_and_files_reach_uv_as_flags(tmp_path, monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("PIP_")]:  # this machine's own (PIP_CERT, ...)
        monkeypatch.delenv(name)
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url = file:///srv/a/simple file:///srv/b/simple\n"
                    "constraint = /etc/caps.txt\ncert = /etc/ca.pem\n", encoding="utf-8")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "180")
    options = pip_config()
    assert options["extra-index-url"] == "file:///srv/a/simple file:///srv/b/simple"
    assert options["find-links"] == "/opt/wheels" and options["cert"] == "/etc/ca.pem"
    cmd, env = uv_command(["-e", ".[cpu]"], options)
    assert cmd[1:3] == ["pip", "install"] and cmd[-2:] == ["-e", ".[cpu]"]
    assert cmd[cmd.index("--python") + 1] == sys.executable
    assert cmd[cmd.index("--index-strategy") + 1] == "unsafe-best-match"  # pip's rule across indexes
    pairs = list(zip(cmd, cmd[1:]))
    assert ("--extra-index-url", "file:///srv/a/simple") in pairs and ("--extra-index-url", "file:///srv/b/simple") in pairs
    assert ("--find-links", "/opt/wheels") in pairs and ("--constraint", "/etc/caps.txt") in pairs
    assert env == {"SSL_CERT_FILE": "/etc/ca.pem", "UV_HTTP_TIMEOUT": "180"}


def test_uv_reads_the_flags_it_is_given():
    """The flags are uv's own: `uv pip install --dry-run` accepts them (no package is fetched)."""
    cmd, _ = uv_command(["--dry-run", "--offline", "--no-deps", "-e", "."],
                        {"find-links": "/nonexistent/wheels", "constraint": ""})
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert "unexpected argument" not in result.stderr and "error: invalid value" not in result.stderr, result.stderr
