"""The documentation stays true to the schema: docs/configuration.md is current, every key is described,
config.yaml shows defaults, and the links between the pages resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO


def _generator():
    spec = importlib.util.spec_from_file_location("make_configuration", REPO / "docs" / "make_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _generator()


@pytest.fixture(scope="module")
def schema(generator):
    return generator.load_schema()


def test_configuration_md_is_current(generator, schema):
    written = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == generator.render(schema), \
        "docs/configuration.md is stale: run `python docs/make_configuration.py` (make docs)"


def test_every_schema_key_has_a_description(generator, schema):
    keys = generator.schema_keys(schema)
    assert len(keys) > 80, f"only {len(keys)} keys found: does schema_keys still walk every level?"
    assert generator.undescribed(schema) == []


# A description in a YAML flow mapping (`{type: number, description: a, b}`) is cut at its first comma, and the
# rest becomes a key of its own that JSON schema ignores: only these keywords belong in a property.
SCHEMA_KEYWORDS = {"type", "default", "description", "minimum", "maximum", "exclusiveMinimum", "enum", "items",
                   "properties", "additionalProperties", "uniqueItems", "minItems", "maxItems", "minLength",
                   "pattern", "anyOf"}


def test_schema_properties_hold_only_schema_keywords(generator, schema):
    stray = {key: sorted(set(spec) - SCHEMA_KEYWORDS) for key, spec in generator.schema_keys(schema)
             if set(spec) - SCHEMA_KEYWORDS}
    assert stray == {}, "a description in a flow mapping was cut at a comma: quote it"


def test_every_key_appears_in_configuration_md(generator, schema):
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [key for key, _ in generator.schema_keys(schema) if f"`{key}`" not in text]
    assert missing == []


def test_check_reports_a_stale_file_in_one_line(generator, tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n", encoding="utf-8")
    monkeypatch.setattr(generator, "OUTPUT", stale)
    monkeypatch.setattr(generator, "REPO", tmp_path)
    assert generator.main(["--check"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    stale.write_text(generator.render(generator.load_schema()), encoding="utf-8")
    assert generator.main(["--check"]) == 0


def _defaults_differing(values: dict, properties: dict, prefix: str = "") -> list[str]:
    """Keys of `values` that the schema does not know or whose value is not the schema's default."""
    wrong = []
    for key, value in values.items():
        spec = properties.get(key)
        if spec is None:
            wrong.append(f"{prefix}{key}: not in the schema")
        elif "properties" in spec and isinstance(value, dict):
            wrong += _defaults_differing(value, spec["properties"], f"{prefix}{key}.")
        elif value != spec.get("default"):
            wrong.append(f"{prefix}{key}: {value!r}, the schema's default is {spec.get('default')!r}")
    return wrong


def test_config_yaml_shows_the_schema_defaults(schema):
    """config.yaml lists keys users set, each at its default: the schema is the one place defaults live."""
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    assert _defaults_differing(config, schema["properties"]) == []


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "resources" / "README.md"]


LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_between_pages_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for match in LINK.finditer(text):
        target = (match[1] or match[2]).split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target):
            continue  # an anchor on the same page, or a web address
        if not (page.parent / target).exists():
            broken.append(target)
    assert broken == []


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
