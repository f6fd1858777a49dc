"""Feedback -> prefix text, by a named, versioned template.

Templates are data: YAML files in `megatron_ixt/format/templates/` (`critique`, `quality`,
`none`), or any YAML file of the same shape given by path. Each has a `name`, a `version`
(recorded in the `.meta.json` of every preprocessed dataset) and a `kind`:

* `none`: no prefix;
* `quality`: the quality level 1..5 (`levels.py`), e.g. "Quality: 4/5";
* `critique`: overall score, axis scores and the judge's critique text.

Evaluation and generation call the same two functions that preprocessing uses, so that the
"best feedback" / "worst feedback" prefixes they build match the training prefixes exactly:

    render_prefix("quality", 5)                          -> "Quality: 5/5"
    render_prefix("critique", {"score": 9, "critique": "Clear."})
    prefix_token_ids(tokenizer, "quality", 5)            -> [<|feedback|>, ..., <|/feedback|>]
"""

from __future__ import annotations

import functools
import hashlib
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from megatron_ixt.format.document import STANDARD_AXES, Feedback
from megatron_ixt.format.levels import NUM_LEVELS, QualityThresholds

TEMPLATE_DIR = Path(__file__).with_name("templates")
"""Where the built-in templates live."""

TEMPLATE_KINDS = ("none", "quality", "critique")

DEFAULT_PREFIX_TEMPLATE = "critique"
"""`--prefix-template` of every tool when none is given (and the checkpoint records none)."""

# Fields a template line may use, per kind.
_FIELDS = {
    "none": set(),
    "quality": {"level"},
    "critique": {"level", "score", "axes", "critique", "judge"},
}

FeedbackOrLevel = Union[int, Feedback, Mapping[str, Any], str]


def builtin_templates() -> list[str]:
    """Names of the templates shipped with the package."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class PrefixTemplate:
    """A loaded prefix template. Build with `load_template`."""

    name: str
    version: int
    kind: str
    lines: tuple[str, ...]
    description: str = ""
    display_scale: tuple[float, float] = (0.0, 10.0)
    score_decimals: int = 1
    axis_format: str = "{label} {score}"
    axis_separator: str = ", "
    axis_labels: Mapping[str, str] = field(default_factory=dict)
    max_tokens: Optional[int] = None
    """Token budget of the prefix text (delimiters excluded); longer prefixes are cut at it,
    so the critique's tail goes first (its line comes last). None: no budget."""
    source: str = ""
    """Where it was loaded from: the built-in name or the file path."""
    sha256: str = ""
    """Checksum of the YAML file, so that an edited template is noticed even at the same version."""

    def identity(self) -> dict:
        """What the `.meta.json` records about the template."""
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "source": self.source,
            "sha256": self.sha256,
        }

    def fit(self, ids):
        """Prefix text token ids cut to the template's budget (``max_tokens``)."""
        return ids if self.max_tokens is None or len(ids) <= self.max_tokens else ids[: self.max_tokens]

    # -- rendering ------------------------------------------------------------------------

    def render(self, feedback: Optional[Feedback], level: Optional[int]) -> str:
        """The prefix text for already-validated inputs (the preprocessing hot path)."""
        if self.kind == "none":
            return ""
        values = {"level": level}
        if self.kind == "critique":
            if feedback is None:
                raise ValueError(f"template '{self.name}' renders feedback, not a bare level")
            values.update(
                score=None if feedback.score is None else self._display(feedback.score, feedback.scale),
                axes=self._render_axes(feedback) or None,
                critique=feedback.critique or None,
                judge=feedback.judge or None,
            )
        lines = []
        for line in self.lines:
            names = _field_names(line)
            if any(values.get(name) is None for name in names):
                continue  # e.g. no critique text: leave out the "Critique:" line
            lines.append(line.format(**values))
        return "\n".join(lines)

    def _display(self, score: float, scale: tuple[float, float]) -> str:
        low, high = scale
        shown_low, shown_high = self.display_scale
        shown = shown_low + (score - low) / (high - low) * (shown_high - shown_low)
        text = f"{shown:.{self.score_decimals}f}"
        # "7.0" -> "7": fewer tokens, same meaning.
        return text.rstrip("0").rstrip(".") if "." in text else text

    def _render_axes(self, feedback: Feedback) -> str:
        order = [a for a in STANDARD_AXES if a in feedback.axes]
        order += sorted(a for a in feedback.axes if a not in STANDARD_AXES)
        parts = []
        for axis in order:
            label = self.axis_labels.get(axis) or axis.replace("_", " ").capitalize()
            score = self._display(feedback.axes[axis], feedback.scale)
            parts.append(self.axis_format.format(label=label, score=score))
        return self.axis_separator.join(parts)


@functools.lru_cache(maxsize=256)
def _field_names(line: str) -> tuple[str, ...]:
    # Cached: `render` runs once per annotated document.
    return tuple(name for _, name, _, _ in string.Formatter().parse(line) if name)


@functools.lru_cache(maxsize=32)
def load_template(name_or_path: str) -> PrefixTemplate:
    """Load a built-in template by name (`critique`, `quality`, `none`) or a YAML file by path."""
    builtin = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        path, source = builtin, name_or_path
    else:
        path, source = Path(name_or_path), str(name_or_path)
        if not path.is_file():
            raise ValueError(
                f"unknown prefix template {name_or_path!r}: expected one of "
                f"{', '.join(builtin_templates())} or the path of a template YAML file"
            )
    raw = path.read_bytes()
    try:
        spec = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    return _template_from_spec(spec, path, source, hashlib.sha256(raw).hexdigest())


def _template_from_spec(spec: Any, path: Path, source: str, sha256: str) -> PrefixTemplate:
    def fail(what: str):
        raise ValueError(f"{path}: {what}")

    if not isinstance(spec, dict):
        fail("expected a mapping with name, version, kind and lines")
    for key in ("name", "version", "kind", "lines"):
        if key not in spec:
            fail(f"missing key '{key}'")
    if not isinstance(spec["version"], int) or spec["version"] < 1:
        fail(f"'version' must be a positive integer, got {spec['version']!r}")
    kind = spec["kind"]
    if kind not in TEMPLATE_KINDS:
        fail(f"'kind' must be one of {', '.join(TEMPLATE_KINDS)}, got {kind!r}")
    lines = spec["lines"] or []
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        fail("'lines' must be a list of strings")
    for line in lines:
        unknown = set(_field_names(line)) - _FIELDS[kind]
        if unknown:
            fail(f"line {line!r} uses {sorted(unknown)}; a '{kind}' template may use {sorted(_FIELDS[kind])}")
    if kind != "none" and not lines:
        fail(f"a '{kind}' template needs at least one line")
    display_scale = tuple(float(v) for v in spec.get("display_scale", (0, 10)))
    if len(display_scale) != 2 or not display_scale[0] < display_scale[1]:
        fail(f"'display_scale' must be [min, max] with min < max, got {spec.get('display_scale')!r}")
    max_tokens = spec.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        fail(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
    return PrefixTemplate(
        name=str(spec["name"]),
        version=spec["version"],
        kind=kind,
        lines=tuple(lines),
        description=str(spec.get("description", "")),
        display_scale=display_scale,
        score_decimals=int(spec.get("score_decimals", 1)),
        axis_format=str(spec.get("axis_format", "{label} {score}")),
        axis_separator=str(spec.get("axis_separator", ", ")),
        axis_labels=dict(spec.get("axis_labels") or {}),
        max_tokens=max_tokens,
        source=source,
        sha256=sha256,
    )


def _as_template(template: Union[str, PrefixTemplate]) -> PrefixTemplate:
    return template if isinstance(template, PrefixTemplate) else load_template(template)


def render_prefix(
    template: Union[str, PrefixTemplate],
    feedback_or_level: FeedbackOrLevel,
    thresholds: Optional[QualityThresholds] = None,
) -> str:
    """The prefix text (without delimiters) for a quality level or for a feedback.

    Args:
        template: a template name (`critique`, `quality`, `none`), a YAML path, or a
            loaded `PrefixTemplate`.
        feedback_or_level: an `int` level 1..5 (for `quality` templates); a `Feedback`
            or a feedback dict as in the document format (`score`, optional `scale`,
            `axes`, `critique`); or a `str` taken as critique text alone.
        thresholds: how a feedback's score becomes a level; default fixed fifths. Pass
            the thresholds recorded in the dataset's `.meta.json` when it used quantiles.
    """
    template = _as_template(template)
    if template.kind == "none":
        return ""
    thresholds = thresholds or QualityThresholds.fixed()
    if isinstance(feedback_or_level, bool):
        raise TypeError("a quality level must be an int 1..5, not a bool")
    if isinstance(feedback_or_level, int):
        level = feedback_or_level
        if not 1 <= level <= NUM_LEVELS:
            raise ValueError(f"quality level must be 1..{NUM_LEVELS}, got {level}")
        if template.kind == "critique":
            raise ValueError(
                f"template '{template.name}' renders a critique, not a level: pass a feedback dict "
                f"(or feedback_for_level({level}))"
            )
        return template.render(None, level)
    feedback = _as_feedback(feedback_or_level, require_score=template.kind == "quality")
    level = None if feedback.score is None else thresholds.level(feedback.score, feedback.scale)
    return template.render(feedback, level)


def _as_feedback(value: Union[Feedback, Mapping[str, Any], str], require_score: bool) -> Feedback:
    if isinstance(value, Feedback):
        if require_score and value.score is None:
            raise ValueError("a 'quality' prefix needs a feedback with a score")
        return value
    if isinstance(value, str):
        if require_score:
            raise ValueError("a 'quality' prefix needs a level or a feedback with a score, not text")
        return Feedback(score=None, critique=value)
    if isinstance(value, Mapping):
        return Feedback.from_dict(dict(value), require_score=require_score)
    raise TypeError(f"expected a level, a Feedback, a feedback dict or a critique string, got {type(value).__name__}")


def prefix_token_ids(
    tokenizer,
    template: Union[str, PrefixTemplate],
    feedback_or_level: FeedbackOrLevel,
    thresholds: Optional[QualityThresholds] = None,
) -> list[int]:
    """Token ids of the whole prefix: `[<|feedback|>] + tokens(prefix text) + [<|/feedback|>]`.

    Empty for the `none` template. `tokenizer` is one of `megatron_ixt.tokenizers.build`
    (it provides `feedback_open_id` / `feedback_close_id`). These are exactly the ids that
    preprocessing puts before a document's text tokens.
    """
    template = _as_template(template)
    if template.kind == "none":
        return []
    text = render_prefix(template, feedback_or_level, thresholds)
    return prefix_ids_of_texts(tokenizer, template, [text])[0].tolist()


def prefix_ids_of_texts(tokenizer, template: PrefixTemplate, texts: Sequence[str]) -> list:
    """The whole prefix of each rendered prefix text, as an int64 array:
    `[<|feedback|>] + tokens(text)` cut to the template's budget `+ [<|/feedback|>]`.

    One batched tokenizer call (`tokenize_batch`) for all texts. Preprocessing calls this
    for every batch, and `prefix_token_ids` for one text: training and inference build
    their prefixes in this one place.
    """
    import numpy as np  # here, not at the top: the data tools' --help does not load numpy

    open_id = np.array([tokenizer.feedback_open_id], dtype=np.int64)
    close_id = np.array([tokenizer.feedback_close_id], dtype=np.int64)
    return [np.concatenate([open_id, np.asarray(template.fit(ids), dtype=np.int64), close_id])
            for ids in tokenizer.tokenize_batch(list(texts))]


def feedback_for_level(
    level: int, scale: tuple[float, float] = (0.0, 10.0), critique: Optional[str] = None
) -> Feedback:
    """A feedback whose score (and every standard axis) sits mid-way in a fixed level's band.

    Convenience for building "best" (level 5) / "worst" (level 1) critique prefixes at
    evaluation time when no written critique is at hand.
    """
    if not 1 <= level <= NUM_LEVELS:
        raise ValueError(f"quality level must be 1..{NUM_LEVELS}, got {level}")
    low, high = scale
    score = low + (level - 0.5) / NUM_LEVELS * (high - low)
    return Feedback(score=score, scale=(float(low), float(high)),
                    axes={axis: score for axis in STANDARD_AXES}, critique=critique)
