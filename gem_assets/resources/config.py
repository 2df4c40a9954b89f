"""The settings resource: environment variables (``GEM_*``) as a Dagster resource.

:class:`GemConfig`'s fields are generated from the declarations of
:class:`gem_assets.config.Settings` (:mod:`gem_assets.config.schema`): one resource field per
setting, with the setting's type, default and doc (the Dagster launchpad's description, which
names the ``GEM_*`` variable). A setting whose type Dagster config cannot express declares how
the resource holds it (:class:`gem_assets.config.schema.Portable`: ``embed_cap`` holds the
embedding cap as an integer, ``-1`` for the profile's); ``home`` and ``state`` are held as
absolute paths, so that runs in other processes read the same folders. Adding a setting to
``Settings`` adds it here.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

from dagster import ConfigurableResource
from pydantic import Field

from gem_assets.config import Layout, Settings, schema

__all__ = ["GemConfig", "GemResource", "with_settings_fields"]


def _resource_fields(settings_cls: type) -> dict[str, tuple[str, Any, Any, str]]:
    """Setting name to ``(resource field name, type, default, description)``."""
    defaults = {f.name: f.default for f in dataclasses.fields(settings_cls)}
    out = {}
    for name, spec in schema.specs(settings_cls).items():
        portable = spec.portable
        if portable.type is not None:
            type_ = portable.type
        else:
            base, optional = schema.field_type(settings_cls, name)
            if typing.get_origin(base) is not None:
                raise TypeError(f"setting {name} ({base}) needs a Portable(type=...) to be held by a Dagster resource")
            type_ = Optional[base] if optional else base
        description = " ".join(f"{spec.doc} {portable.doc}".split()) + f" ({spec.env})"
        out[name] = (portable.name or name, type_, portable.encode(defaults[name]), description)
    return out


class GemResource(ConfigurableResource):
    """What :class:`GemConfig` does with its fields; :func:`with_settings_fields` adds the fields.

    ``settings_class`` is the schema the fields come from (:class:`~gem_assets.config.Settings`).
    """

    settings_class: ClassVar[type] = Settings

    @classmethod
    def from_settings(cls, settings: Settings) -> "GemResource":
        """The resource holding ``settings``."""
        values = {}
        for name, spec in schema.specs(cls.settings_class).items():
            values[spec.portable.name or name] = spec.portable.encode(spec.portable.resolve(getattr(settings, name)))
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "GemResource":
        """The resource for the ``GEM_*`` environment variables (see :mod:`gem_assets.config`)."""
        return cls.from_settings(cls.settings_class.from_env(os.environ if env is None else env))

    def settings(self) -> Settings:
        """The plain :class:`~gem_assets.config.Settings`."""
        values = {}
        for name, spec in schema.specs(self.settings_class).items():
            values[name] = spec.portable.decode(getattr(self, spec.portable.name or name))
        return self.settings_class(**values)

    @property
    def layout(self) -> Layout:
        """File layout under ``GEM_HOME``."""
        return self.settings().layout

    def corpus_glob(self) -> str:
        """The shard glob; writes the default corpus on first use when ``GEM_CORPUS`` is unset."""
        settings = self.settings()
        if settings.corpus:
            return settings.corpus
        from gem_assets.lib.corpus.bbc import ensure_default_corpus

        return ensure_default_corpus(settings.layout.corpus_dir)

    def shards(self) -> dict[str, Path]:
        """Partition key to file of every shard the corpus glob matches now."""
        from gem_assets.lib.corpus.shards import discover_shards

        return discover_shards(self.corpus_glob())

    def shard_path(self, key: str) -> Path:
        """The file of shard ``key``.

        Raises
        ------
        FileNotFoundError
            If the corpus glob no longer matches a shard with that key.
        """
        shards = self.shards()
        if key not in shards:
            raise FileNotFoundError(
                f"shard {key!r} is not matched by the corpus glob {self.corpus_glob()!r} any more "
                f"({len(shards)} shards match); restore the file or delete the partition"
            )
        return shards[key]


def with_settings_fields(settings_cls: type, base: type = GemResource) -> type:
    """A subclass of ``base`` with one field per setting of ``settings_cls`` (and that
    ``settings_class``)."""
    fields = _resource_fields(settings_cls)
    annotations: dict[str, Any] = {rname: type_ for rname, type_, _, _ in fields.values()}
    annotations["settings_class"] = ClassVar[type]
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": f"{base.__name__}[{settings_cls.__name__}]",
        "__annotations__": annotations,
        "__doc__": f"The fields of {settings_cls.__name__}, generated from its declarations.",
        "settings_class": settings_cls,
    }
    for rname, _, default, description in fields.values():
        namespace[rname] = Field(default=default, description=description)
    return type(f"{base.__name__}Fields", (base,), namespace)


class GemConfig(with_settings_fields(Settings)):
    """Corpus, columns, K, profile, ``GEM_HOME``, ``GEM_STATE`` and every other setting.

    One field per :class:`gem_assets.config.Settings` field, with its meaning (the field's
    description names its ``GEM_*`` variable); ``embed_cap`` is ``-1`` for the profile's cap,
    ``0`` for no cap, or a positive cap. Built from the environment by :meth:`from_env` when the
    code location loads (reading a few variables; nothing is written or loaded then).
    """
