"""Declaring a setting once: its type, default, environment variable, checks and doc.

A setting is a field of a frozen dataclass declared with :func:`setting`::

    k: int = setting(16, env="GEM_K", minimum=2, doc="Number of GEM domains.")

The field's annotation is its type, its default is the dataclass default, and the
:class:`Spec` in its metadata carries the rest. Everything else is derived from these
declarations: reading the environment (:func:`from_env`), the per-field checks
(:func:`check`), the fallbacks to the profile (:attr:`Spec.profile`), the fields of the Dagster
resource (``gem_assets.resources.config.GemConfig``) and the documentation of the variables
(:func:`env_doc`). This module has no Dagster import.

Reading a variable (:func:`parse`): the value is stripped; empty or unset is the default; a
``lower`` setting is lower-cased; ``int`` and ``float`` settings read ``none`` as ``None`` when
they are optional and as the default otherwise; a ``bool`` is false for ``0``, ``false``,
``no`` and ``off`` and true otherwise; a ``parse`` function overrides all of this for one
setting.
"""

from __future__ import annotations

import dataclasses
import functools
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Spec", "Portable", "setting", "specs", "field_type", "parse", "from_env", "check", "env_doc",
           "params_doc"]

_FALSE = frozenset({"0", "false", "no", "off"})


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Portable:
    """How a resource (a value other processes read) holds a setting, when not as itself.

    Parameters
    ----------
    name : str, optional
        The resource's field name (default: the setting's).
    type : type, optional
        The resource's field type when the setting's type is not one Dagster config expresses
        (a union other than ``X | None``); default: the setting's.
    encode, decode : callable
        Setting value to resource value, and back: ``decode(encode(v)) == v``.
    resolve : callable
        Applied to the setting's value when a resource is built from settings, before
        ``encode`` (a local path made absolute, so that other processes read the same folder);
        not to the resource field's default.
    doc : str
        How the encoding reads, appended to the field's description.
    """

    name: str | None = None
    type: Any = None
    encode: Callable[[Any], Any] = _identity
    decode: Callable[[Any], Any] = _identity
    resolve: Callable[[Any], Any] = _identity
    doc: str = ""


@dataclass(frozen=True)
class Spec:
    """What a setting declares besides its type and default (see :func:`setting`)."""

    env: str
    doc: str
    choices: Mapping[str, str] | None = None
    minimum: float | None = None
    lower: bool = False
    parse: Callable[[str], Any] | None = None
    profile: str | None = None
    inherit: Any = None
    portable: Portable = Portable()
    default_doc: str | None = None


def setting(default: Any, *, env: str, doc: str, choices: Mapping[str, str] | None = None,
            minimum: float | None = None, lower: bool = False, parse: Callable[[str], Any] | None = None,
            profile: str | None = None, inherit: Any = None, portable: Portable | None = None,
            default_doc: str | None = None) -> Any:
    """Declare a setting: a dataclass field whose metadata holds its :class:`Spec`.

    Parameters
    ----------
    default : object
        The value when nothing sets it.
    env : str
        Its environment variable (``GEM_...``).
    doc : str
        What it means (reStructuredText; rendered into the module and class docstrings and the
        Dagster launchpad's description of the resource field).
    choices : mapping of str to str, optional
        The admitted values, each with a short description (may be empty).
    minimum : number, optional
        The least admitted value (``None`` is always admitted for an optional setting).
    lower : bool
        Lower-case the variable's value before reading it.
    parse : callable, optional
        Reads a non-empty, stripped value of the variable (instead of the type's reading).
    profile : str, optional
        A :class:`~gem_assets.config.profiles.Profile` field: while the setting holds ``inherit``,
        its effective value is that field of the selected profile.
    inherit : object
        The value meaning "the profile's" (``None`` unless told).
    portable : Portable, optional
        How the Dagster resource holds it, when not as itself.
    default_doc : str, optional
        How the default reads in the documentation (default: derived from ``default`` and
        ``profile``).
    """
    spec = Spec(env=env, doc=" ".join(doc.split()), choices=choices, minimum=minimum, lower=lower,
                parse=parse, profile=profile, inherit=inherit, portable=portable or Portable(),
                default_doc=default_doc)
    return field(default=default, metadata={"setting": spec})


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def specs(cls: type) -> dict[str, Spec]:
    """Field name to :class:`Spec` of every setting of ``cls``, in declaration order."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata}


def field_type(cls: type, name: str) -> tuple[Any, bool]:
    """``(base type, optional)`` of a setting: ``int | None`` is ``(int, True)``; a wider union is
    returned as it is, with ``optional`` telling whether it admits ``None``."""
    hint = _hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = tuple(a for a in args if a is not type(None))
        optional = len(rest) < len(args)
        if len(rest) == 1:
            return rest[0], optional
        return hint, optional
    return hint, False


def parse(cls: type, name: str, raw: str | None) -> Any:
    """The value of setting ``name`` of ``cls`` for the variable's value ``raw`` (``None``: unset)."""
    spec = specs(cls)[name]
    default = {f.name: f for f in dataclasses.fields(cls)}[name].default
    raw = (raw or "").strip()
    if not raw:
        return default
    if spec.lower:
        raw = raw.lower()
    if spec.parse is not None:
        return spec.parse(raw)
    base, optional = field_type(cls, name)
    if base is bool:
        return raw.lower() not in _FALSE
    if base in (int, float):
        if raw.lower() == "none":
            return None if optional else default
        try:
            return base(raw)
        except ValueError as exc:
            kind = "an integer" if base is int else "a number"
            raise ValueError(f"{spec.env}={raw!r} is not {kind}") from exc
    if base is str:
        return raw
    raise TypeError(f"setting {name} of type {base!r} needs a parse function to be read from {spec.env}")


def from_env(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that the environment ``env`` sets (every setting)."""
    return {name: parse(cls, name, env.get(spec.env)) for name, spec in specs(cls).items()}


def _quote_choices(choices: Mapping[str, str]) -> str:
    items = [f"'{v}' ({d})" if d else f"'{v}'" for v, d in choices.items()]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def check(obj: Any) -> None:
    """Raise ``ValueError`` naming the variable for a setting of ``obj`` outside its choices or
    below its minimum."""
    for name, spec in specs(type(obj)).items():
        value = getattr(obj, name)
        if value is None and field_type(type(obj), name)[1]:
            continue  # an optional setting left unset
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(f"{spec.env} must be {_quote_choices(spec.choices)}, got {value!r} "
                             f"(unknown {name.replace('_', ' ')})")
        if spec.minimum is not None and value != spec.inherit and value < spec.minimum:
            raise ValueError(f"{spec.env} must be >= {spec.minimum}, got {spec.env}={value}")


def _default_doc(cls: type, name: str, spec: Spec) -> str:
    if spec.default_doc is not None:
        return spec.default_doc
    default = {f.name: f for f in dataclasses.fields(cls)}[name].default
    if spec.profile is not None and default == spec.inherit:
        return "the profile's"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "``1``" if default else "``0``"
    return f"``{default}``"


def env_doc(cls: type) -> str:
    """The environment variables of ``cls``'s settings as a reStructuredText definition list."""
    out = []
    for name, spec in specs(cls).items():
        text = f"{spec.doc} Default: {_default_doc(cls, name, spec)}."
        out.append(f"``{spec.env}``\n" + textwrap.indent(textwrap.fill(text, 92), "    "))
    return "\n".join(out)


def params_doc(cls: type) -> str:
    """A numpydoc ``Parameters`` section of ``cls``'s settings."""
    out = ["Parameters", "----------"]
    for name, spec in specs(cls).items():
        hint = _hints(cls)[name]
        type_name = getattr(hint, "__name__", None) or str(hint).replace("NoneType", "None")
        text = f"{spec.doc} (``{spec.env}``; default: {_default_doc(cls, name, spec)})"
        out.append(f"{name} : {type_name}\n" + textwrap.indent(textwrap.fill(text, 92), "    "))
    return "\n".join(out)
