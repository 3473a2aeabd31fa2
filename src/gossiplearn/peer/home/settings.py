"""Settings declared once, and everything made from the declaration.

A setting is a field of a section dataclass (``config.py``: ``GossipConfig`` is ``[gossip]``)
whose default is made by ``setting(...)``. The field's name is the key, its annotation the type
(``bool``, ``int``, ``float``, ``str`` or ``tuple[str, ...]``), and the ``Spec`` in its metadata
says the rest: the check beyond the type, the help text, the flag, and how the peer.toml
template shows it. A section may also take keys it does not declare (``free_keys``: ``[task]``'s
``params``), some of them declared for their help and flag.

``declared`` reads the sections into ``Setting`` rows, in order. From those rows come the
validation of peer.toml and of flags (``Setting.parse``), the default peer.toml
(``render_template``), the ``start`` command's options (``cli/main.py``) and README.md's
configuration table (``render_readme_table``), so none of them can drift from the dataclasses.

Invariants: every field of a section carries a ``Spec`` (``declared`` raises ``TypeError``
otherwise); ``Setting.parse`` returns a value of the setting's type that passes its check, or
raises ``UserError`` naming the key, the bad value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, get_args, get_origin, get_type_hints

from gossiplearn.errors import UserError

T = TypeVar("T")
_SPEC = "gossiplearn.setting"
_FREE = "gossiplearn.free_keys"
_NBSP = "\u00a0"  # textwrap does not break lines there
_NOUNS: dict[type, str] = {int: "integer", float: "number", str: "string", tuple: "list of strings"}


class Check(Protocol):
    """What a setting accepts beyond its type."""

    def accepts(self, value: Any) -> bool: ...

    def describe(self, noun: str) -> str:
        """What is accepted, as a noun phrase built on ``noun`` ("number of seconds")."""
        ...


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


@dataclass(frozen=True)
class Range:
    """``low <= value < high`` (``low < value`` when ``low_open``). NaN is never accepted.

    ``zero`` says what 0 means: noted after the range when 0 is in it, else 0 is accepted
    besides it. ``finite`` refuses infinities."""

    low: float
    high: float = math.inf
    low_open: bool = False
    finite: bool = False
    zero: str = ""

    def accepts(self, value: Any) -> bool:
        if self.zero and value == 0:
            return True
        if self.finite and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return bool(above and (self.high == math.inf or value < self.high))

    def describe(self, noun: str) -> str:
        if self.high < math.inf:
            bound = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g})"
        else:
            bound = f"{'>' if self.low_open else '>='} {self.low:g}"
        text = f"{_a('finite ' + noun if self.finite else noun)} {bound}"
        if not self.zero:
            return text
        if self.low == 0 and not self.low_open:
            return f"{text} (0 = {self.zero})"
        return f"0 ({self.zero}) or {text}"


@dataclass(frozen=True)
class OneOf:
    """One of a few strings (a ``click.Choice`` as a flag)."""

    choices: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return value in self.choices

    def describe(self, noun: str) -> str:
        return f"{', '.join(self.choices[:-1])} or {self.choices[-1]}"


@dataclass(frozen=True)
class NonEmpty:
    """A list with at least one ``what``."""

    what: str

    def accepts(self, value: Any) -> bool:
        return len(value) >= 1

    def describe(self, noun: str) -> str:
        return f"{_a(noun)} with at least one {self.what}"


@dataclass(frozen=True)
class Spec:
    """A setting's declaration, less its section, key, type and default (the field's).

    ``help`` is a phrase in Markdown (backticks are dropped outside README.md) saying what the
    setting does, not what it accepts (``check`` and ``unit`` say that). ``flag``: True for
    ``--<key>``, a name such as ``"--gossip-interval"``, or False for none; a bool's flag also
    has its ``--no-`` form. ``example``: shown commented out in the template instead of the
    default; ``template`` False leaves the key out of it. ``path``: a file name, relative to
    the home in peer.toml and to the working directory as a flag. ``kind``: the type of a
    declared free key (a field's comes from its annotation)."""

    help: str
    check: Check | None = None
    unit: str = ""
    flag: str | bool = True
    example: Any = None
    template: bool = True
    path: bool = False
    kind: type | None = None


def setting(
    default: T,
    help: str,
    *,
    check: Check | None = None,
    unit: str = "",
    flag: str | bool = True,
    example: Any = None,
    template: bool = True,
    path: bool = False,
) -> T:
    """A section field's default, carrying its declaration (see ``Spec``)."""
    spec = Spec(help, check, unit, flag, example, template, path)
    return field(default=default, metadata={_SPEC: spec})


def free_keys(**declared: Spec) -> Mapping[str, Any]:
    """A field that takes every key of its section that is not a field, as a mapping.
    ``declared`` keys are checked against their ``Spec`` (which must give ``kind``) and have
    help and flags like fields; others are taken as they are."""
    return field(default_factory=dict, metadata={_FREE: declared})


@dataclass(frozen=True)
class Setting:
    """One row of the declaration: what ``declared`` reads from a section's field."""

    section: str
    key: str
    kind: type  # bool, int, float, str, or tuple (of strings)
    default: Any  # None for a free key: absent unless given
    spec: Spec
    free: bool = False  # a declared free key, kept in the section's free-key mapping

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def flag(self) -> str | None:
        """The flag's name (``--gossip-interval``; a bool's ``--no-`` form is implied)."""
        if self.spec.flag is True:
            return "--" + self.key.replace("_", "-")
        return self.spec.flag or None

    @property
    def accepted(self) -> str:
        """What is accepted, e.g. "a number of seconds > 0"."""
        if self.kind is bool:
            return "true or false"
        noun = _NOUNS[self.kind] + (f" of {self.spec.unit}" if self.spec.unit else "")
        return self.spec.check.describe(noun) if self.spec.check else _a(noun)

    def sentence(self, *, markdown: bool = False) -> str:
        """The help text as a sentence; without Markdown's backticks unless ``markdown``."""
        text = self.spec.help if markdown else self.spec.help.replace("`", "")
        return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")

    def parse(self, value: Any, where: str) -> Any:
        """``value`` (as TOML or a flag gives it) as this setting's type: an int is taken for
        a float, a string for a list of one. Raises UserError naming ``where``."""
        bad = UserError(
            f"{where}: {self.dotted} = {value!r} is not valid: expected {self.accepted}"
        )
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            try:
                value = float(value) if ok else value
            except OverflowError:
                ok = False
        elif self.kind is str:
            ok = isinstance(value, str)
        else:
            value = [value] if isinstance(value, str) else value
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        if not ok or (self.spec.check is not None and not self.spec.check.accepts(value)):
            raise bad
        return value


def _kind(annotation: Any, where: str) -> type:
    if annotation in (bool, int, float, str):
        return annotation  # type: ignore[no-any-return]
    if get_origin(annotation) is tuple and get_args(annotation) == (str, ...):
        return tuple
    raise TypeError(f"{where}: a setting is bool, int, float, str or tuple[str, ...]")


def is_section(cls: Any) -> bool:
    """Whether ``cls`` is a section of settings (a dataclass declared with ``setting``)."""
    return dataclasses.is_dataclass(cls) and any(
        _SPEC in f.metadata or _FREE in f.metadata for f in dataclasses.fields(cls)
    )


def free_field(cls: type) -> str | None:
    """The name of the section's ``free_keys`` field, or None."""
    names = [f.name for f in dataclasses.fields(cls) if _FREE in f.metadata]
    return names[0] if names else None


def sections(root: type) -> dict[str, type]:
    """The sections of ``root``: each field of it is one, named as in peer.toml, and made by
    its ``default_factory`` (the section's class)."""
    found: dict[str, type] = {}
    for f in dataclasses.fields(root):
        if not isinstance(f.default_factory, type):
            raise TypeError(f"{root.__name__}.{f.name}: a section is field(default_factory=cls)")
        found[f.name] = f.default_factory
    return found


def declared(root: type) -> tuple[Setting, ...]:
    """The settings of every section of ``root`` (see ``sections``), in declaration order.
    Sections that hold no settings (``[members]``) are skipped."""
    rows: list[Setting] = []
    for section, cls in sections(root).items():
        if not is_section(cls):
            continue
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            where = f"{cls.__name__}.{f.name}"
            if _FREE in f.metadata:
                for key, spec in f.metadata[_FREE].items():
                    if spec.kind is None:
                        raise TypeError(f"{where}: declared free key {key!r} needs a kind")
                    if spec.template and spec.example is None:  # there is no default to show
                        raise TypeError(f"{where}: {key!r} needs an example, or template=False")
                    kind = _kind(spec.kind, f"{where}[{key!r}]")
                    rows.append(Setting(section, key, kind, None, spec, free=True))
            elif _SPEC in f.metadata:
                kind = _kind(hints[f.name], where)
                rows.append(Setting(section, f.name, kind, f.default, f.metadata[_SPEC]))
            else:
                raise TypeError(f"{where} is not declared with setting() or free_keys()")
    return tuple(rows)


def toml_value(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's too
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def comment(text: str) -> str:
    """``text`` as TOML comment lines, wrapped to fit 79 columns."""
    return "".join(f"{line}\n" for line in _comment(text))


def _comment(text: str) -> list[str]:
    for op in (" >= ", " > ", " = "):  # keep "a number >= 1" together
        text = text.replace(op, op.replace(" ", _NBSP))
    lines = textwrap.wrap(text, 79, initial_indent="# ", subsequent_indent="# ")
    return [line.replace(_NBSP, " ") for line in lines]


def render_template(settings: Iterable[Setting], *, header: str, trailer: str = "") -> str:
    """The commented peer.toml that ``gossiplearn init`` writes: each setting in the template
    at its default (or its example, commented out), under its help; a flag after the value."""
    lines = _comment(header)
    section = ""
    for s in settings:
        if not s.spec.template:
            continue
        if s.section != section:
            section = s.section
            lines += ["", f"[{section}]"]
        else:
            lines.append("")
        accepts = f" Accepts {s.accepted}." if s.spec.check else ""
        lines += _comment(s.sentence(markdown=True) + accepts)
        example = s.spec.example is not None
        value = f"{s.key} = {toml_value(s.spec.example if example else s.default)}"
        value = f"# {value}" if example else value
        lines.append(f"{value}  # {flag_usage(s, markdown=False)}" if s.flag else value)
    return "\n".join(lines) + "\n" + (f"\n{trailer}" if trailer else "")


def flag_usage(s: Setting, *, markdown: bool = True) -> str:
    """The flag as users see it: ``--listen`` (repeatable), ``--training/--no-training``."""
    if s.flag is None:
        return "no flag"
    name = f"{s.flag}/--no-{s.flag[2:]}" if s.kind is bool else s.flag
    name = f"`{name}`" if markdown else name
    return name + (" (repeatable)" if s.kind is tuple else "")


def render_readme_table(settings: Iterable[Setting], extra_rows: Iterable[str] = ()) -> str:
    """README.md's configuration table (Markdown), one row per setting, then ``extra_rows``."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| key | flag | default | accepts | what it does |", "|---|---|---|---|---|"]
    for s in settings:
        default = "unset" if s.default is None else f"`{toml_value(s.default)}`"
        row = (f"`{s.dotted}`", flag_usage(s), default, cell(s.accepted), cell(s.spec.help))
        lines.append("| " + " | ".join(row) + " |")
    lines += extra_rows
    return "\n".join(lines) + "\n"
