"""Command-line options made from MultiModalConfig's fields: a model option's flag, type, default and help come
from the field and its entry in the config's docstring, so a script and the config cannot disagree."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any

from .configuration import MultiModalConfig

_ENTRY = re.compile(r" {4}(\w+(?:, \w+)*): (.*)")  # "    name: text" or "    name, other: text"
_SENTENCE_END = re.compile(r"(?<=\.)\s+(?=[A-Z])")  # a full stop, then a capital: not "e.g. ``x``" nor "0..1"
_STATED_DEFAULT = re.compile(r"\(default: (.*)\)$")


def field_docs(config_class: type = MultiModalConfig) -> dict[str, str]:
    """Each field's entry in the class docstring's Google-style ``Args:`` section, on one line; an entry that
    names several fields (``image_mean, image_std: ...``) is each one's."""
    docs: dict[str, str] = {}
    names: list[str] = []
    section = inspect.cleandoc(config_class.__doc__).partition("\nArgs:\n")[2]
    for line in section.splitlines():
        if line and not line.startswith(" "):  # the next section
            break
        if entry := _ENTRY.match(line):
            names = entry[1].split(", ")
            docs.update(dict.fromkeys(names, entry[2]))
        elif line.strip():
            docs.update({name: f"{docs[name]} {line.strip()}" for name in names})
    return docs


def field_help(name: str, config_class: type = MultiModalConfig) -> str:
    """The first sentence of the field's docstring entry, as plain text without its full stop."""
    return _SENTENCE_END.split(field_docs(config_class)[name], maxsplit=1)[0].replace("``", "").removesuffix(".")


def shown(value: Any) -> str:
    """A default as one would type it: ``0.5 0.5 0.5`` for a list."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def at_least(minimum: int):
    """An argparse ``type``: an integer not below ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def config_argument(group, name: str, *, sample: Any = None, default_help: str | None = None,
                    **overrides) -> argparse.Action:
    """Add the flag of MultiModalConfig's field ``name`` to ``group`` (a parser or an argument group).

    The flag is the field's name with dashes (``--image-size``); its type is the default's (``nargs="+"`` of the
    items' type for a list, ``--x/--no-x`` for a bool), its default the field's, and its help the first sentence
    of the field's docstring entry, followed by the default.

    Args:
        sample: the built-in sample's own default, where it differs from the field's: the flag then defaults to
            None, for the script to resolve, and the help names both.
        default_help: what the help says of the default instead, where the script decides it (from the data).
        **overrides: keywords of ``add_argument`` that replace the derived ones (``type``, ``nargs``, ``default``,
            ``choices``, ``metavar``).
    """
    field = next(f for f in dataclasses.fields(MultiModalConfig) if f.name == name)
    default = field.default
    kwargs: dict[str, Any] = {"default": list(default) if isinstance(default, tuple) else default}
    if isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, (list, tuple)):
        kwargs.update(type=type(default[0]), nargs="+")
    elif default is not None:
        kwargs["type"] = type(default)
    kwargs.update(overrides)
    if sample is not None:
        kwargs["default"] = None
        default_help = f"{shown(default)}; the sample: {shown(sample)}"
    elif default_help is None and kwargs["default"] is not None:
        default_help = shown(kwargs["default"])
    text = field_help(name) + (f" (default: {default_help})" if default_help else "")
    action = group.add_argument(f"--{name.replace('_', '-')}", **kwargs)
    action.help = text.replace("%", "%%")  # set afterwards: Python 3.10's BooleanOptionalAction adds a default
    return action


def default_text(action: argparse.Action) -> str | None:
    """What ``--help`` says an option's default is: the ``(default: ...)`` its help ends with, else its default
    value; None for an option without one, or a plain switch (off)."""
    if stated := _STATED_DEFAULT.search(action.help or ""):
        return stated[1].replace("%(default)s", shown(action.default)).replace("%%", "%")
    if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
        return None
    return shown(action.default)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's help followed by its default (:func:`default_text`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = default_text(action)
        if default is None or _STATED_DEFAULT.search(action.help or ""):
            return action.help
        return f"{action.help or ''} (default: {default.replace('%', '%%')})".lstrip()
