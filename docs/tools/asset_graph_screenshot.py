"""Screenshot of the asset graph in the Dagster UI, taken with headless Chromium.

    python docs/tools/asset_graph_screenshot.py [GEM_HOME] [OUT]     # from the repository root

Starts a dagster-webserver on 127.0.0.1:3112 over ``GEM_HOME``'s instance (default ``data``, after
``make run``) and ``workspace.yaml``, opens the global asset lineage in Debian's Chromium
(``apt-get install chromium``) driven by Playwright (``pip install playwright`` in any environment; no
browser download: it uses ``/usr/bin/chromium``), dismisses the first-visit dialog, and writes
``docs/asset-graph.png``.
"""
import sys
import subprocess, time, os, signal, urllib.request
from playwright.sync_api import sync_playwright
HOME = sys.argv[1] if len(sys.argv) > 1 else "data"
OUT = sys.argv[2] if len(sys.argv) > 2 else "docs/asset-graph.png"
env = dict(os.environ, GEM_HOME=HOME, DAGSTER_HOME=os.path.join(HOME, "dagster"), HF_HUB_OFFLINE="1")
web = subprocess.Popen([".venv/bin/dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "3112"],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
try:
    for _ in range(60):
        try:
            urllib.request.urlopen("http://127.0.0.1:3112/server_info", timeout=2); break
        except Exception:
            time.sleep(2)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        pg = b.new_page(viewport={"width": 1600, "height": 1000})
        pg.goto("http://127.0.0.1:3112/asset-groups", wait_until="networkidle")
        time.sleep(3)
        try:
            pg.get_by_text("Skip", exact=True).click(timeout=5000)
        except Exception:
            pg.keyboard.press("Escape")
        time.sleep(1)
        # expand every group in the graph
        for name in ("corpus", "teacher", "student", "taxonomy", "mixing", "evaluation"):
            try:
                pg.locator(f"text={name}").last.dblclick(timeout=3000)
            except Exception:
                pass
        time.sleep(4)
        pg.screenshot(path=OUT)
        b.close()
finally:
    os.killpg(web.pid, signal.SIGTERM)
