"""A checkpoint's name from its unit path, and which units the include/exclude patterns admit.

**The rule.** A unit (``detect.unit_for``) is a path relative to the watch root. Its last
segment is ``{checkpoint}``; the segments before it are ``{run}`` (joined by ``/``, so a
deeper run directory keeps its structure). A unit directly in the root has no run directory
of its own: ``{run}`` is then the root directory's own name, so watching ``runs/`` or
``runs/llama/`` names ``runs/llama/checkpoint-500/`` the same, ``llama/checkpoint-500``.
Single files keep their extension (``latest/model.safetensors`` -> ``latest/model.safetensors``)
so that ``model.pt`` and ``model.safetensors`` side by side never share a name.

The template (default ``{prefix}{run}/{checkpoint}``) is filled in, then empty segments are
dropped (an empty ``{run}``, a prefix ending in ``/``). ``{prefix}`` and the template's own
text are used verbatim and must be name characters; ``run`` and ``checkpoint`` come from
file names, so every character outside ``[A-Za-z0-9._-]``, ``+`` itself and a segment's
leading ``-`` is escaped as ``+HH`` per UTF-8 byte (``my run`` -> ``my+20run``). The escape
is one-to-one, so two different paths never get one name (unless the template leaves out
``{run}``). A name over 200 characters is refused with the reason.

Examples (watch root ``runs/``, prefix ``""``)::

    llama/checkpoint-500            -> llama/checkpoint-500
    team/llama/step-100             -> team/llama/step-100
    checkpoint-500 (in the root)    -> runs/checkpoint-500
    model.pt (in the root)          -> runs/model.pt
    llama/run 2  with prefix "pi/"  -> pi/llama/run+202

**Patterns.** ``include`` and ``exclude`` are shell-style globs (``fnmatch``, case-sensitive,
``*`` also matches ``/``) tested against the unit path. A pattern without ``/`` is tested
against the unit's last segment only (``checkpoint-*`` admits every HF Trainer checkpoint at
any depth). A unit is admitted when no include pattern is given or one matches, and no
exclude pattern matches. Patterns select whole units: a checkpoint is stored whole or not.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from fnmatch import fnmatchcase

from peerstore.errors import InvalidNameError
from peerstore.model.names import validate_name

DEFAULT_TEMPLATE = "{prefix}{run}/{checkpoint}"
TEMPLATE_FIELDS = ("prefix", "run", "checkpoint")
MAX_PREFIX_LEN = 100
MAX_TEMPLATE_LEN = 200
MAX_PATTERNS = 64
MAX_PATTERN_LEN = 256

_PLAIN = re.compile(r"[A-Za-z0-9._-]")
_PREFIX = re.compile(r"[A-Za-z0-9._+/-]*")


def escape_segment(segment: str) -> str:
    """``segment`` with every character outside [A-Za-z0-9._-], every ``+`` and a leading
    ``-`` written as ``+HH`` per UTF-8 byte (upper-case hex). One-to-one."""
    out = []
    for i, ch in enumerate(segment):
        if _PLAIN.fullmatch(ch) and not (i == 0 and ch == "-"):
            out.append(ch)
        else:
            # surrogatepass, not surrogateescape: os.fsdecode's \udcXX must not collide with real UTF-8
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def run_and_checkpoint(root_name: str, unit: str) -> tuple[str, str]:
    """(run, checkpoint) of a unit, unescaped: see the module docstring."""
    from peerstore.watch.detect import split_path  # the config reader imports Naming; detect is for watching

    segments = split_path(unit)
    run = "/".join(segments[:-1]) if len(segments) > 1 else root_name
    return run, segments[-1]


def pattern_matches(pattern: str, unit: str) -> bool:
    """Whether one include/exclude pattern matches a unit path."""
    target = unit if "/" in pattern else unit.rsplit("/", 1)[-1]
    return fnmatchcase(target, pattern)


@dataclass(frozen=True)
class Naming:
    """How the watcher names units and which it stores. Validated on construction
    (InvalidNameError names the setting and says what to change)."""

    prefix: str = ""
    template: str = DEFAULT_TEMPLATE
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)
        _check_template(self.template)
        for key, patterns in (("include", self.include), ("exclude", self.exclude)):
            if not isinstance(patterns, tuple) or len(patterns) > MAX_PATTERNS:
                raise InvalidNameError(f"watch {key}: expected a tuple of at most {MAX_PATTERNS} patterns")
            for p in patterns:
                if not isinstance(p, str) or not p or len(p) > MAX_PATTERN_LEN:
                    raise InvalidNameError(
                        f"watch {key}: pattern {p!r} must be a non-empty string of at most {MAX_PATTERN_LEN} characters"
                    )
        # The template's own text must yield valid names: try it once with plain values.
        self._render("run", "checkpoint")

    def admits(self, unit: str) -> bool:
        """True when the include/exclude patterns let ``unit`` be stored."""
        if self.include and not any(pattern_matches(p, unit) for p in self.include):
            return False
        return not any(pattern_matches(p, unit) for p in self.exclude)

    def name_for(self, root_name: str, unit: str) -> str:
        """The checkpoint name of ``unit`` under a watch root whose directory is called
        ``root_name`` (its last path component, e.g. "runs"). InvalidNameError if too long."""
        run, checkpoint = run_and_checkpoint(root_name, unit)
        escaped_run = "/".join(escape_segment(s) for s in run.split("/") if s)
        return self._render(escaped_run, escape_segment(checkpoint))

    def _render(self, run: str, checkpoint: str) -> str:
        text = self.template.format(prefix=self.prefix, run=run, checkpoint=checkpoint)
        name = "/".join(s for s in text.split("/") if s)
        try:
            return validate_name(name)
        except InvalidNameError as err:
            raise InvalidNameError(
                f"{err}; shorten the path, the name prefix or the name template ({self.template!r})"
            ) from None


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX_LEN:
        raise InvalidNameError(f"watch name_prefix: expected text of at most {MAX_PREFIX_LEN} characters")
    if not _PREFIX.fullmatch(prefix):
        bad = next(ch for ch in prefix if not _PREFIX.fullmatch(ch))
        raise InvalidNameError(
            f"watch name_prefix {prefix!r} contains {bad!r}; use only letters, digits, . _ + - and /"
        )
    if prefix.startswith(("/", "-")) or any(s in (".", "..") for s in prefix.split("/")):
        raise InvalidNameError(
            f"watch name_prefix {prefix!r} must not start with '/' or '-' nor contain '.' or '..' segments"
        )


def _check_template(template: str) -> None:
    if not isinstance(template, str) or not template or len(template) > MAX_TEMPLATE_LEN:
        raise InvalidNameError(f"watch name template: expected text of 1 to {MAX_TEMPLATE_LEN} characters")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InvalidNameError(f"watch name template {template!r}: {err}") from None
    fields = []
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            raise InvalidNameError(
                f"watch name template {template!r}: {{{field}}} is not one of "
                + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            )
        fields.append(field)
    if "checkpoint" not in fields:
        raise InvalidNameError(
            f"watch name template {template!r} lacks {{checkpoint}}: every checkpoint would get the same name"
        )
