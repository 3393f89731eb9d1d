"""The generic recipe helper: TOML loading, dotted overrides, typed dataclass building."""

from dataclasses import dataclass, field

import pytest

from pasture.config import apply_overrides, build_dataclass, load_toml_recipe
from pasture.errors import PastureError


@dataclass
class Inner:
    rows: int = 8
    rate: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    dir: str
    enabled: bool = True
    inner: Inner = field(default_factory=Inner)
    weights: dict[str, float] = field(default_factory=dict)
    limit: int | None = None


def test_load_by_path_and_by_shipped_name(tmp_path):
    (tmp_path / "web.toml").write_text('[output]\ndir = "out"\n[minhash]\nbands = 14\n')
    by_name = load_toml_recipe("web", tmp_path)
    by_path = load_toml_recipe(tmp_path / "web.toml", tmp_path)
    assert by_name == by_path == {"output": {"dir": "out"}, "minhash": {"bands": 14}}
    with pytest.raises(PastureError, match="shipped: web"):
        load_toml_recipe("nope", tmp_path)
    (tmp_path / "bad.toml").write_text("[x\n")
    with pytest.raises(PastureError, match="not valid TOML"):
        load_toml_recipe(tmp_path / "bad.toml", tmp_path)


def test_overrides_parse_toml_literals_and_leave_input_untouched():
    recipe = {"minhash": {"bands": 14}, "engine": {"kind": "local"}}
    out = apply_overrides(recipe, ["minhash.bands=20", "engine.kind=ray", "mix.weights.code=0.17", "x.flag=true",
                                   "x.names=[\"a\", \"b\"]", "x.path=/tmp/a b"])
    assert out["minhash"]["bands"] == 20 and recipe["minhash"]["bands"] == 14
    assert out["engine"]["kind"] == "ray"
    assert out["mix"]["weights"]["code"] == 0.17
    assert out["x"] == {"flag": True, "names": ["a", "b"], "path": "/tmp/a b"}
    with pytest.raises(PastureError, match="section.key=value"):
        apply_overrides(recipe, ["minhash.bands"])
    with pytest.raises(PastureError, match="minhash.bands is a value"):
        apply_overrides(recipe, ["minhash.bands.x=1"])


def test_build_dataclass_types_and_errors_name_the_key():
    built = build_dataclass(Outer, {"dir": "o", "inner": {"rows": 4, "rate": 1, "names": ["a"]},
                                    "weights": {"web": 1}, "limit": 3}, "output")
    assert built == Outer(dir="o", inner=Inner(rows=4, rate=1.0, names=["a"]), weights={"web": 1.0}, limit=3)
    assert isinstance(built.inner.rate, float)
    cases = [
        ({"dir": "o", "bogus": 1}, "unknown key output.bogus"),
        ({}, "missing key output.dir"),
        ({"dir": 3}, "output.dir: expected str"),
        ({"dir": "o", "enabled": 1}, "output.enabled: expected bool"),
        ({"dir": "o", "inner": {"rows": True}}, "output.inner.rows: expected int"),
        ({"dir": "o", "inner": {"rows": 1.5}}, "output.inner.rows: expected int"),
        ({"dir": "o", "inner": {"names": "a"}}, "output.inner.names: expected a list"),
        ({"dir": "o", "weights": {"web": "x"}}, "output.weights.web: expected float"),
        ({"dir": "o", "limit": "x"}, "output.limit: expected"),
        ({"dir": "o", "inner": 3}, "output.inner: expected a section"),
    ]
    for values, message in cases:
        with pytest.raises(PastureError, match=message):
            build_dataclass(Outer, values, "output")
