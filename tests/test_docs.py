"""The docs: they build with warnings as errors, the README stays a short front door with its
two ways in, and no benchmark figure is typed by hand (each comes from `benchmarks/results/`
through cog, with its date and machine: `docs/figures.py`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_readme import PAGES, README, ROOT

#: Figures a page may state in its own words, and why: rules and defaults that sweeper's code
#: sets, not measurements (a measured figure belongs in `docs/figures.py`). An entry no page
#: holds any more fails the test, so the list cannot grow stale.
NOT_MEASURED = {
    "100% GPU offload": "the article's hand-tuned settings (README), not a measurement",
    "at or below the nominal 2.5%": "the confirmation's error budget, a design choice",
    "at least 1% less time": "the confirmation's smallest gain, a rule",
    "(and by 3% or more)": "the drift check's threshold, a rule",
    "Ties within 1%": "the recommendation rule's tie margin, a rule",
    "95% interval": "the level of every interval sweeper states (also in 95% intervals)",
    "95% bootstrap": "the same level",
    "95% test": "the same level",
}

#: A number with a unit of speed, time or share, as a measured figure is written.
FIGURE = re.compile(
    r"(?<![\w.+-])[-+]?\d+(?:[.,]\d+)?\s?(?:%|tok/s|ms\b)"
    r"|\b\d+\.\d+\s?(?:s|seconds|min|minutes|h|hours)\b"
)


def test_the_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    """What `make docs` runs, into a temporary folder (a broken link, a page outside every
    table of contents or a heading out of order fails)."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "sphinx-build"),
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(ROOT / "docs"),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "html" / "tutorial" / "lmstudio.html").exists()


def test_the_readme_is_a_short_front_door() -> None:
    """At most 8 KB, and its first screen keeps both ways in: LM Studio users' install without
    a compiler, and the Linux set-up of llama.cpp users and developers."""
    data = README.read_bytes()
    assert len(data) <= 8 * 1024, f"README.md is {len(data)} bytes: move a section to docs/"
    first = data.decode("utf-8").split("\n## ")[0]
    for must in ("pipx install .", "uv tool install .", "loadsweeper", "sweeper serve"):
        assert must in first, must
    for must in ("make demo", "make test"):
        assert re.search(rf"^{must}\b", first, re.M), must


def prose(text: str) -> str:
    """A page without what may hold figures: cog's code and output, code blocks, inline code,
    link targets and HTML comments."""
    text = re.sub(r"<!-- \[\[\[cog.*?\[\[\[end\]\]\] -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def hand_typed(text: str) -> list[str]:
    text = prose(text)
    for allowed in NOT_MEASURED:
        text = text.replace(allowed, "")
    return FIGURE.findall(text)


def test_no_figure_is_typed_by_hand() -> None:
    found = {}
    for page in PAGES:
        if figures := hand_typed(page.read_text(encoding="utf-8")):
            found[page.relative_to(ROOT).as_posix()] = figures
    assert not found, f"figures typed by hand (route them through docs/figures.py): {found}"
    text = " ".join(prose(p.read_text(encoding="utf-8")) for p in PAGES)
    assert not [a for a in NOT_MEASURED if a not in text], "allowed figures no page holds"


def test_the_figure_check_sees_a_typed_figure() -> None:
    """The check itself: a figure typed into prose is found, one in cog's output is not."""
    assert hand_typed("went from 10.4 to 8.5 tok/s, +12.3% faster, 0.81 s, 2.4 minutes") == [
        "8.5 tok/s",
        "+12.3%",
        "0.81 s",
        "2.4 minutes",
    ]
    cogged = "<!-- [[[cog x() ]]] -->\n+12.3% and 8.5 tok/s\n<!-- [[[end]]] -->\n"
    assert hand_typed(cogged) == []


def test_every_quoted_results_file_has_its_date() -> None:
    """Each results file the pages quote has the date `docs/figures.py` prints beside its
    figures (and the machine, where one ran: `figures.machine`)."""
    sys.path.insert(0, str(ROOT / "docs"))
    import figures

    quoted = set(re.findall(r"benchmarks/results/(\w+)\.json", " ".join(map(str, PAGES))))
    quoted |= {
        name
        for page in PAGES
        for name in re.findall(r"benchmarks/results/(\w+)\.json", page.read_text("utf-8"))
    }
    assert quoted >= {"demo", "fidelity", "noise", "search", "threads"}
    for name in sorted(quoted):
        data = figures.load(name)
        assert re.match(r"\d{4}-\d{2}-\d{2}$", figures.when(data)), name
