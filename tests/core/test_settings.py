"""Typed settings: code and schema agree on every key, defaults come from the schema only."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from conftest import REPO
from jibjib.core.errors import ConfigError
from jibjib.core.params import VGGISH
from jibjib.core.settings import (
    AugmentSettings, RunSettings, Settings, TrainSettings, VggishSettings, schema, schema_default, schema_node,
)


def every_section(settings: object, key: str = "") -> list[tuple[str, object]]:
    """(dotted key, section) of a built Settings and every section nested in it."""
    found = [(key, settings)]
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            found += every_section(value, f"{key}.{field.name}" if key else field.name)
    return found


def test_every_schema_key_is_a_field_and_every_field_a_schema_key() -> None:
    for key, section in every_section(Settings.from_config({})):
        fields = {field.name for field in dataclasses.fields(section)}
        assert fields == set(schema_node(key)["properties"]), key or "(top level)"


def test_the_defaults_are_the_schemas() -> None:
    settings = Settings.from_config({})
    for key, section in every_section(settings):
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            if dataclasses.is_dataclass(value):
                continue
            full = f"{key}.{field.name}" if key else field.name
            default = schema_default(full)
            expected = tuple(default) if isinstance(default, list) else default
            assert value == expected, full


def test_settings_classes_carry_no_defaults_of_their_own() -> None:
    """A default in code would be a second copy that can drift from the schema (the front end excepted)."""
    for key, section in every_section(Settings.from_config({})):
        if key == "frontend":
            continue
        with_default = [f.name for f in dataclasses.fields(section)
                        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert not with_default, f"{key}: {with_default}"


def test_the_vggish_front_end_constants_are_the_schemas() -> None:
    """FrontEnd keeps Google's reference values in code (VGGISH); the schema must agree with them."""
    assert dataclasses.asdict(VGGISH) == schema_default("frontend")


def test_config_yaml_builds_the_default_settings() -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert Settings.from_config(config) == Settings.from_config({})


def test_unknown_key_is_one_line_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^train\.augment\.gian_db: not a setting of train\.augment"):
        TrainSettings.from_dict({"augment": {"gian_db": 3}})


def test_ranges_are_ordered() -> None:
    with pytest.raises(ConfigError, match=r"train\.augment\.background_snr_db: must be \[low, high\]"):
        AugmentSettings.from_dict({"background_snr_db": [5, -20]})


def test_settings_are_frozen_and_lists_become_tuples() -> None:
    settings = Settings.from_config({"convlstm": {"conv_filters": [8, 16]}})
    assert settings.convlstm.conv_filters == (8, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.train.seed = 1  # type: ignore[misc]
    hash(settings)


def test_yaml_bare_off_is_off() -> None:
    assert VggishSettings.from_dict({"embedding_cache": False}).embedding_cache == "off"


def test_run_settings_round_trip_through_json() -> None:
    run = Settings.from_config({"vggish": {"epochs": 3}, "train": {"seed": 7}}).run("vggish")
    assert RunSettings.from_json(run.to_json()) == run
    assert json.loads(run.to_json())["vggish"]["epochs"] == 3
    # Keys left out take the schema's defaults: a hand-written --settings needs only what it changes.
    assert RunSettings.from_json('{"model": "convlstm", "convlstm": {"seq_len": 3}}').net.seq_len == 3


def test_run_settings_refuse_a_section_of_another_model() -> None:
    with pytest.raises(ConfigError, match="unknown section vggish"):
        RunSettings.from_dict({"model": "convlstm", "vggish": {}})


def test_the_schema_is_the_one_snakemake_validates() -> None:
    assert schema()["properties"].keys() == Settings.__dataclass_fields__.keys()
