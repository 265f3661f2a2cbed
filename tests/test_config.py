from pathlib import Path

import pytest

from conftest import FAKE_STUDY, WriteStudy
from sweeper import config as studyfile
from sweeper.errors import StudyFileError
from sweeper.settings import LoadSettings

BAD_FILES = [
    # (replace old -> new in FAKE_STUDY, expected message after "<path>: ")
    ({'name = "fake"\n': ""}, "object missing required field `name`"),
    (
        {'backend = "fake"': 'backend = "vllm"'},
        "unknown backend 'vllm'; choose one of: llama-server, ",
    ),
    ({"trials = 4": 'trials = "four"'}, "budget.trials: expected `int`, got `str`"),
    ({"trials = 4": "trials = 0"}, "budget.trials: must be 1 or more, got 0"),
    ({"[budget]": "[budget]\nnights = 2"}, "budget: object contains unknown field `nights`"),
    ({"cpu_threads = [1, 2, 4]": "cpu_thread = [1, 2, 4]"}, "unknown parameter 'cpu_thread'"),
    (
        {"cpu_threads = [1, 2, 4]": "cpu_threads = [1, 2.5]"},
        "space.cpu_threads: expected int, got float 2.5",
    ),
    (
        {"context_length = [2048, 4096]": "context_length = [2048, -1]"},
        "space.context_length: -1 is below the minimum 1",
    ),
    ({"cpu_threads = 1\n": "cpu_threads = 0\n"}, "baseline.cpu_threads: 0 is below the minimum 1"),
    (
        {'name = "short"': 'name = "medium"'},
        "workloads.medium: unknown workload; built-in workloads are short, long",
    ),
    (
        {'name = "long"\nmax_tokens = 32': 'name = "mine"\nprompt = "hi"'},
        "workloads.mine: a workload of your own needs max_tokens",
    ),
    ({'name = "long"': 'name = "short"'}, "workloads: names repeat: short, short"),
    ({"max_tokens = 16": "max_tokens = 0"}, "workloads.short.max_tokens: must be 1 or more"),
    ({"[space]": "[space]\nmmap = [true]\n[space2]"}, "object contains unknown field `space2`"),
    (
        {"[budget]": '[budget]\ntimeout = "soon"'},
        "budget.timeout: 'soon' is not a duration; write e.g. 8h, 90m, 1h30m or 45s",
    ),
    ({'name = "fake"': 'name = "my study"'}, "name 'my study': use letters, digits"),
    ({"[space]": "space = 3\n[x]"}, "object contains unknown field `x`"),
]


@pytest.mark.parametrize(("replace", "message"), BAD_FILES)
def test_bad_study_files_name_the_problem(
    write_study: WriteStudy, replace: dict[str, str], message: str
) -> None:
    text = FAKE_STUDY
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = write_study(text)
    with pytest.raises(StudyFileError) as err:
        studyfile.load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_not_toml(write_study: WriteStudy) -> None:
    path = write_study("name = \n")
    with pytest.raises(StudyFileError, match="not valid TOML"):
        studyfile.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError, match="no such study file"):
        studyfile.load(tmp_path / "nope.toml")


def test_a_good_file(write_study: WriteStudy, tmp_path: Path) -> None:
    config = studyfile.load(write_study())
    assert config.name == "fake"
    assert config.storage == f"sqlite:///{tmp_path.resolve()}/fake.db"
    assert [w.name for w in config.workloads] == ["short", "long"]
    assert config.workloads[0].prompt.startswith("AIでできることを100項目")
    assert config.workloads[0].max_tokens == 16
    assert config.baseline == LoadSettings(context_length=4096, cpu_threads=1)
    assert config.measure.repeats == 2 and config.measure.warmup == 0
    assert config.budget.trial_timeout_s == 1800


def test_default_workloads_are_the_articles(write_study: WriteStudy) -> None:
    text = FAKE_STUDY.split("[[workloads]]")[0]
    config = studyfile.load(write_study(text))
    assert [(w.name, w.max_tokens) for w in config.workloads] == [("short", 3072), ("long", 4096)]
    assert "月面都市" in config.workloads[1].prompt


def test_own_workload_from_a_file(write_study: WriteStudy, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("Summarize this.", encoding="utf-8")
    path = write_study(
        **{
            'name = "long"\nmax_tokens = 32': (
                'name = "mine"\nprompt_file = "p.txt"\nsystem = "Be brief."\nmax_tokens = 64'
            )
        }
    )
    mine = studyfile.load(path).workloads[1]
    assert (mine.prompt, mine.system, mine.max_tokens) == ("Summarize this.", "Be brief.", 64)


def test_unsupported_setting_for_the_backend(write_study: WriteStudy) -> None:
    path = write_study(
        **{
            'backend = "fake"': 'backend = "llama.cpp"',
            "[space]": "[space]\ncpu_moe_layers = [0, 4]",
        }
    )
    with pytest.raises(StudyFileError) as err:
        studyfile.load(path)
    assert "cpu_moe_layers: the llama.cpp backend cannot apply this setting" in str(err.value)
    assert "tensor buffer overrides" in str(err.value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("8h", 28800), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("12", 12)]
)
def test_durations(text: str, seconds: float) -> None:
    assert studyfile.parse_duration(text) == seconds


def test_shipped_study_files_are_valid() -> None:
    root = Path(__file__).parent.parent / "studies"
    files = sorted(root.glob("*.toml"))
    assert files
    for path in files:
        studyfile.load(path)
