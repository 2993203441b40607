"""Suites: variants (named ablations of a registered model) and parameter checks."""

from __future__ import annotations

import pytest

from benchmark.config import load_suite, parse_suite
from benchmark.errors import ConfigError

BASE = {"name": "s", "datasets": ["synthetic"], "seeds": [0]}


def test_variants_resolve_to_their_base_model_and_params():
    suite = parse_suite({**BASE, "models": ["sasrec", "sas-small"], "params": {"epochs": 2},
                         "variants": {"sas-small": {"model": "sasrec",
                                                    "params": {"hidden_size": 16}}}})
    assert suite.spec("sas-small").name == "sasrec"
    assert suite.model_overrides("sas-small") == {"epochs": 2, "hidden_size": 16}
    assert suite.model_overrides("sasrec") == {"epochs": 2}


@pytest.mark.parametrize("raw, message", [
    ({"models": ["x"], "variants": {"x": {"model": "nosuch"}}}, "unknown model 'nosuch'"),
    ({"models": ["x"], "variants": {"x": {"params": {}}}}, "needs 'model'"),
    ({"models": ["x"], "variants": {"x": {"model": "sasrec", "params": {"hidden": 3}}}},
     "has no parameter 'hidden'"),
    ({"models": ["sasrec"], "params": {"nosuch": 1}}, "no model of the suite has a parameter"),
])
def test_bad_variants_and_params(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_suite({**BASE, **raw})


def test_shipped_suites_are_valid():
    for name in ("accuracy", "vlm2rec-ablation", "paper-protocol"):
        suite = load_suite(name)
        assert suite.models and suite.seeds
