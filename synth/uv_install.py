"""`uv pip install ARGS` with this machine's pip configuration: the Makefile's installer.

uv installs the packages pip would, several times faster (a fresh venv with `.[cpu]`: 17 s
against pip's ~45 s on the project machine, BENCHMARKS.md), but it does not read pip's
configuration files or PIP_* variables. Machines here keep their package sources there
(find-links, extra index URLs, a constraints file, a CA bundle), so this reads them with
`pip config list` and hands them to uv as flags. pip's rule for several indexes (the best
version from any of them) is uv's `unsafe-best-match`.

Run with the venv's python, before synth is installed (no synth imports):
    .venv/bin/python synth/uv_install.py -e '.[cpu]'
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# pip's option → uv's flag (each value of a space-separated list passed on its own)
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip_config() -> dict[str, str]:
    """pip's effective options, files then PIP_* variables (later wins, as in pip)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True, check=True).stdout
    options: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            options[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    return options


def uv_command(args: list[str], options: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The uv command line and the environment variables it needs."""
    uv = Path(sys.executable).with_name("uv")
    cmd = [str(uv), "pip", "install", "--python", sys.executable, "--index-strategy", "unsafe-best-match"]
    for option, flag in FLAGS.items():
        for value in options.get(option, "").split():
            cmd += [flag, value]
    env = {}
    if options.get("cert"):
        env["SSL_CERT_FILE"] = options["cert"]
    if options.get("default-timeout"):
        env["UV_HTTP_TIMEOUT"] = options["default-timeout"]
    return cmd + args, env


def main() -> None:
    cmd, env = uv_command(sys.argv[1:], pip_config())
    os.execve(cmd[0], cmd, {**os.environ, **env})


if __name__ == "__main__":
    main()
