"""Screening: cheap probes that estimate each workload's completion time at its own depths.

Decode speed is a curve over the depth of the context (the tokens already in it), and
configurations cross on it: flash attention can be faster on an empty context and slower where
a long story ends. A full measurement generates every workload to its end, several times; a
screening instead loads the configuration once and measures:

- each workload's real prompt, generating ``probe_tokens``: its time to first token (prompt
  processing included) and the decode speed right after it;
- the decode speed at a few depths up to the deepest point any workload reaches (its prompt and
  its expected output: the baseline's measured output length, else the cap), each a prompt of
  real text (the baseline's own output) of that length, generating ``probe_tokens``.

One set of depth probes serves every workload. The seconds a token takes, fitted as a straight
line over depth through the probes, give each workload's expected completion time: TTFT + the
time to decode its expected output from its prompt's depth on; its mean decode speed is the
expected output over that time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sweeper.measurement import Estimate, Probe, Screen
from sweeper.workloads import Workload

if TYPE_CHECKING:
    from sweeper.backends import Backend
    from sweeper.workloads import Sampling

#: Text the depth probes are made of when the baseline has not written any yet.
FILLER = (
    "In the city under the lunar dome, the night shift began when the habitat lights dimmed to "
    "amber. Engineers walked the long corridors between the farms and the reactor, checking "
    "valves, reading gauges and writing short notes for the morning crew. "
)


@dataclass(frozen=True)
class Reference:
    """What a workload is expected to produce: its output length (the baseline's median,
    else the cap) and real text to build probe prompts from."""

    tokens: float
    text: str = ""
    #: a reasoning model's tokens before its answer (the baseline's: no configuration is
    #: rewarded for thinking less by chance)
    reasoning_tokens: float = 0.0


@dataclass(frozen=True)
class ScreenPlan:
    """What a screening measures (picklable: it travels to the worker)."""

    depths: int
    probe_tokens: int
    references: dict[str, Reference] = field(default_factory=dict)


def depth_targets(shallowest: int, deepest: int, n: int) -> list[int]:
    """``n`` depths spread from just past the shallowest prompt to the deepest point."""
    if n <= 0 or deepest <= shallowest:
        return []
    step = (deepest - shallowest) / n
    return [round(shallowest + step * (i + 1)) for i in range(n)]


def probe_prompt(text: str, tokens: int, chars_per_token: float) -> str:
    """Real text of about ``tokens`` tokens (repeated when there is not enough of it)."""
    text = text.strip() or FILLER
    want = max(1, int(tokens * chars_per_token))
    repeats = want // (len(text) + 1) + 1
    return ((text + " ") * repeats)[:want]


def screen(
    backend: Backend, workloads: Sequence[Workload], sampling: Sampling, plan: ScreenPlan
) -> Screen:
    """Probe a loaded model: each workload's prompt, then depths up to the deepest point."""
    prompts = {
        w.name: Probe.of(backend.generate(_capped(w, plan.probe_tokens), sampling))
        for w in workloads
    }
    refs = {w.name: plan.references.get(w.name, Reference(float(w.max_tokens))) for w in workloads}
    deepest = max(prompts[w].depth + refs[w].tokens for w in prompts)
    shallowest = min(p.depth for p in prompts.values())
    text = max((r.text for r in refs.values()), key=len, default="") or FILLER
    # characters per token of this model and text, from the longest reference that says so
    per_token = 4.0
    for w in workloads:
        r = refs[w.name]
        if r.text and r.tokens:
            per_token = max(1.0, len(r.text) / r.tokens)
            break
    depths = []
    for target in depth_targets(shallowest, int(deepest), plan.depths):
        prompt = probe_prompt(text, target - shallowest, per_token)
        probe_w = Workload("depth", prompt, plan.probe_tokens)
        # each probe's prompt extends the previous one: what the engine holds need not be
        # processed again (only the decode speed at depth is wanted here, not a TTFT)
        probe = Probe.of(backend.generate(probe_w, sampling, reuse_prefix=True))
        depths.append(probe)
        if probe.depth > shallowest:  # the engine counted the tokens: size the next ones by it
            per_token = len(prompt) / (probe.depth - shallowest)
    curve = sorted([*prompts.values(), *depths], key=lambda p: p.depth)
    estimates = {
        w.name: estimate(
            prompts[w.name],
            curve,
            refs[w.name].tokens,
            plan.probe_tokens,
            refs[w.name].reasoning_tokens,
        )
        for w in workloads
    }
    return Screen(prompts, depths, estimates)


def estimate(
    prompt: Probe,
    curve: Sequence[Probe],
    tokens: float,
    probe_tokens: int,
    reasoning_tokens: float = 0.0,
) -> Estimate:
    """Expected completion of ``tokens`` output tokens after ``prompt``: its TTFT, then the
    decode time from the prompt's depth on. The time a token takes grows linearly with the
    depth it is decoded at (attention reads every cached token), so a straight line is fitted
    through the probes' seconds per token (each probe at the middle of the tokens it decoded):
    a least-squares fit over all probes, which a single noisy probe moves little."""
    points = [(p.depth + probe_tokens / 2, 1 / p.decode_tok_s) for p in curve if p.decode_tok_s > 0]
    if not points:
        inf = float("inf")
        return Estimate(prompt.ttft_s, prompt.depth, tokens, 0.0, inf, inf)
    a, b = _line(points)
    mean = sum(y for _, y in points) / len(points)

    def decoding(n: float) -> float:
        """The integral of a + b * d over the n tokens decoded from the prompt's depth on
        (a fit that slopes below zero falls back to the mean seconds per token)."""
        seconds = a * n + b * (prompt.depth * n + n * n / 2)
        return seconds if seconds > 0 or n == 0 else n * mean

    seconds = decoding(tokens)
    return Estimate(
        prompt.ttft_s,
        prompt.depth,
        tokens,
        tokens / seconds if seconds > 0 else 0.0,
        prompt.ttft_s + seconds,
        prompt.ttft_s + decoding(reasoning_tokens),
    )


def _line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope (flat through one point, or one depth)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def _capped(w: Workload, tokens: int) -> Workload:
    return Workload(w.name, w.prompt, min(w.max_tokens, tokens), w.system)
