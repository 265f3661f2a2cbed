"""The service's pages for the docs (`docs/howto/serve.md`): `make screenshots` (not part of
`make test`, which must not change tracked files). Runs `sweeper serve` on a copy of the demo
study made small, queues it in Chromium, and captures the studies page, the plan, the live sweep
and the results."""

from __future__ import annotations

from pathlib import Path

from sweeper.service.background import chromium, scratch, serving

ROOT = Path(__file__).parent.parent
DOCS = Path(__file__).parent
SMALL = {
    "trials = 12": "trials = 6",
    "max_tokens = 48": "max_tokens = 24",
    "max_tokens = 96": "max_tokens = 32",
}


def main() -> None:
    from playwright.sync_api import sync_playwright

    studies = scratch("sweeper-shots-")
    text = (ROOT / "studies" / "demo.toml").read_text()
    for old, new in SMALL.items():
        text = text.replace(old, new)
    (studies / "demo.toml").write_text(text)
    with serving(studies, studies.parent / "home") as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url + "/new?study=demo.toml&budget=8h")
        page.screenshot(path=str(DOCS / "service-new.png"), full_page=True)
        page.click("#queue button")
        page.wait_for_url("**/sweeps/*")
        page.wait_for_function(
            "document.querySelectorAll('#trials tr.trial').length >= 3", timeout=600_000
        )
        page.screenshot(path=str(DOCS / "service-live.png"), full_page=True)
        page.wait_for_function(
            "document.getElementById('state').textContent === 'finished'", timeout=900_000
        )
        page.goto(url + "/")
        page.screenshot(path=str(DOCS / "service-studies.png"), full_page=True)
        page.goto(url + "/studies/demo.toml")
        page.screenshot(path=str(DOCS / "service-results.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
