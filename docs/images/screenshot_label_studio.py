"""Take docs/images/label-studio-task.png: a row of a demo build in Label Studio's labeling page,
in a real headless Chromium (docs/review.md).

    make label-studio                                            # the server, in its own venv
    apt-get install chromium fonts-wqy-microhei && .venv/bin/pip install playwright   # once: the browser,
                                                                   # a CJK font and the driver,
                                                                   # not dependencies of synth
    .venv/bin/python docs/images/screenshot_label_studio.py builds/demo

It starts Label Studio on 127.0.0.1 (tests/label_studio_server.py), pushes the build's
controversial tier with `synth review push`, signs in as the admin in the browser, opens the first
task and saves the page. Chromium gets the flags this machine's closed network needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from label_studio_server import ADMIN, PASSWORD, label_studio_server  # noqa: E402

OUT = ROOT / "docs" / "images" / "label-studio-task.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(build: str) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, label_studio_server(Path(tmp) / "data",
                                                                   log=Path(tmp) / "label-studio.log") as server:
        env = {**os.environ, "LABEL_STUDIO_API_KEY": server.token}
        subprocess.run([str(ROOT / ".venv/bin/synth"), "review", "push", build, "--to", server.url, "--project",
                        "demo tier"], check=True, env=env)
        with server.admin() as admin:
            project = admin.get("/api/projects", params={"title": "demo tier"}).json()["results"][0]
            task = admin.get("/api/tasks", params={"project": project["id"], "page_size": 1}).json()["tasks"][0]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(f"{server.url}/user/login/")
            page.fill("input[name=email]", ADMIN)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{server.url}/projects/{project['id']}/data?tab=0&task={task['id']}")
            page.wait_for_selector("text=安全", timeout=60_000)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(OUT))
            browser.close()
    print(OUT)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "builds/demo")
