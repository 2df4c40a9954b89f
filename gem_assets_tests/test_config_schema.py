"""One configuration schema: a setting declared on Settings is read from its GEM_* variable,
checked, documented and held by the GemConfig resource, with nothing else to write."""

from __future__ import annotations

import dataclasses

import pytest

import gem_assets.config as config
from gem_assets.config import PROFILES, Profile, Settings, schema
from gem_assets.config.schema import setting
from gem_assets.resources.config import GemConfig, with_settings_fields


def _sample_env(cls: type, root) -> dict[str, str]:
    """A value, not the default, for the variable of every setting of ``cls``."""
    env = {}
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, spec in schema.specs(cls).items():
        base, _ = schema.field_type(cls, name)
        if spec.choices is not None:
            value = next(c for c in spec.choices if c != defaults[name])
        elif base is bool:
            value = "0" if defaults[name] else "1"
        elif base is float:
            value = "0.5"
        elif base is str:
            value = str(root / name)
        else:  # int, and the embedding cap (int, None or "profile")
            value = str(int(spec.minimum or 1) * 7)  # 7 terms, 14 counted: the taxonomy's caps agree
        env[spec.env] = value
    return env


def test_every_setting_is_declared_once_with_a_variable_and_a_doc():
    specs = schema.specs(Settings)
    assert list(specs) == [f.name for f in dataclasses.fields(Settings)]  # no undeclared field
    envs = [s.env for s in specs.values()]
    assert all(e.startswith("GEM_") for e in envs) and len(set(envs)) == len(envs)
    assert all(s.doc for s in specs.values())
    profile_fields = {f.name for f in dataclasses.fields(Profile)}
    assert all(s.profile in profile_fields for s in specs.values() if s.profile is not None)
    for e in envs:  # the documentation is generated from the declarations
        assert f"``{e}``" in config.__doc__ and e in Settings.__doc__
    assert "$GEM_STATE/mlflow.db" in config.__doc__ and "$GEM_HOME/mlflow.db" not in config.__doc__


def test_every_setting_round_trips_env_settings_resource_settings(tmp_path):
    env = _sample_env(Settings, tmp_path.resolve())
    s = Settings.from_env(env)
    defaults = Settings()
    changed = {f.name for f in dataclasses.fields(Settings) if getattr(s, f.name) != getattr(defaults, f.name)}
    assert changed == set(schema.specs(Settings))  # every variable was read
    gem = GemConfig.from_env(env)
    assert gem.settings() == s
    assert GemConfig.from_settings(s).settings() == s
    fields = GemConfig.to_config_schema().as_field().config_type.fields  # what the launchpad shows
    for name, spec in schema.specs(Settings).items():
        rname = spec.portable.name or name
        assert rname in fields and spec.env in fields[rname].description


def test_a_field_added_to_the_schema_is_read_checked_and_held_by_the_resource(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Extended(Settings):
        widgets: int = setting(3, env="GEM_TEST_WIDGETS", minimum=1, doc="Widgets per shard.")
        flavour: str | None = setting(None, env="GEM_TEST_FLAVOUR", choices={"sweet": "", "sour": ""},
                                      lower=True, doc="Flavour.")

    assert Extended.from_env({}).widgets == 3 and Extended.from_env({}).flavour is None
    e = Extended.from_env({"GEM_TEST_WIDGETS": "5", "GEM_TEST_FLAVOUR": " Sour ", "GEM_K": "4"})
    assert (e.widgets, e.flavour, e.k) == (5, "sour", 4)
    with pytest.raises(ValueError, match="GEM_TEST_WIDGETS"):
        Extended.from_env({"GEM_TEST_WIDGETS": "0"})
    with pytest.raises(ValueError, match="GEM_TEST_WIDGETS='lots' is not an integer"):
        Extended.from_env({"GEM_TEST_WIDGETS": "lots"})
    with pytest.raises(ValueError, match="GEM_TEST_FLAVOUR must be 'sweet' or 'sour', got 'salty'"):
        Extended.from_env({"GEM_TEST_FLAVOUR": "salty"})
    assert "``GEM_TEST_WIDGETS``" in schema.env_doc(Extended)

    Resource = with_settings_fields(Extended)
    r = Resource.from_env({"GEM_TEST_WIDGETS": "5", "GEM_HOME": str(tmp_path)})
    assert r.widgets == 5 and "GEM_TEST_WIDGETS" in Resource.model_fields["widgets"].description
    assert r.settings() == e.with_(widgets=5, flavour=None, k=16, home=str(tmp_path.resolve()))
    assert isinstance(r.settings(), Extended)
    env = _sample_env(Extended, tmp_path.resolve())
    assert Resource.from_env(env).settings() == Extended.from_env(env)


def test_reading_rules():
    assert Settings.from_env({"GEM_K": " ", "GEM_SEED": "none"}) == Settings()  # empty or none: the default
    s = Settings.from_env({"GEM_MAX_CHARS": "none", "GEM_BALANCE": "none", "GEM_ISOTROPY": "off",
                           "GEM_PROFILE": "smoke", "GEM_EMBED_CAP": "0"})
    assert s.max_chars is None and s.balance is None and not s.isotropy and s.embed_cap_per_shard is None
    assert s.effective_max_chars == PROFILES["smoke"].max_chars and s.effective_embed_cap is None
    assert Settings.from_env({"GEM_MIXER": "DoReMi"}).mixer == "doremi"
    with pytest.raises(ValueError, match="GEM_BALANCE='x' is not a number"):
        Settings.from_env({"GEM_BALANCE": "x"})
    with pytest.raises(ValueError, match=r"GEM_PROFILE must be 'smoke' \(.*\), 'default' .* got 'huge'"):
        Settings(profile="huge")


def test_profile_fallbacks_are_declared_on_the_settings():
    s = Settings(profile="full")
    for name, spec in schema.specs(Settings).items():
        if spec.profile is not None:
            assert s.effective(name) == getattr(PROFILES["full"], spec.profile)
    assert Settings(profile="full", taxonomy_max_terms=9).taxonomy_params()["max_terms"] == 9
    assert GemConfig().embed_cap == -1 and GemConfig(embed_cap=0).settings().effective_embed_cap is None
    assert GemConfig(embed_cap=10).settings().effective_embed_cap == 10


def test_readme_configuration_table_lists_every_declared_variable():
    """The README's table has a row for every variable the schema declares (and the resources'
    and executors' variables), and none that nothing reads."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Configuration (environment variables)", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `GEM_")]
    listed = {v for line in rows for v in re.findall(r"`(GEM_[A-Z_]+)`", line.split(" | ")[0])}
    declared = {spec.env for spec in schema.specs(Settings).values()}
    others = {"GEM_EMBED_MODEL", "GEM_EMBED_BATCH_SIZE", "GEM_EMBED_MAX_SEQ_LENGTH", "GEM_DEVICE",  # embedder
              "GEM_MLFLOW_TRACKING_URI", "GEM_MLFLOW", "GEM_MLFLOW_ON_ERROR",                       # MLflow
              "GEM_EXECUTOR", "GEM_MAX_CONCURRENT", "GEM_DASK_ADDRESS"}                              # executors
    expected = declared | others
    assert listed == expected, ("missing:", sorted(expected - listed), "unknown:", sorted(listed - expected))
