"""Parameter validation: every registered model's parameters have declared valid values, checked
by ``ModelSpec.resolve`` before any work; a fuzz-style CLI test feeds each ``--set`` key of each
model an out-of-range and a wrong-type value and expects one line and exit code 2."""

from __future__ import annotations

import math

import pytest

from benchmark.cli import main
from benchmark.errors import ConfigError
from benchmark.registry import (
    PATTERN_RULES,
    Rule,
    get_model_spec,
    list_models,
    param_rule,
)

MODELS = list_models()


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.parametrize("rule, value, expected", [
    (Rule(low=1), 1, None),
    (Rule(low=1), 0, "must be >= 1"),
    (Rule(low=0, low_open=True), 0.0, "must be > 0"),
    (Rule(low=0, low_open=True), 1e-12, None),
    (Rule(low=0.0, high=1.0, high_open=True), 0.0, None),
    (Rule(low=0.0, high=1.0, high_open=True), 1.0, "must be in [0, 1)"),
    (Rule(low=0.0, high=1.0, high_open=True), -0.1, "must be in [0, 1)"),
    (Rule(low=0.0, high=1.0), 1.0, None),
    (Rule(low=0.0, high=1.0, low_open=True), 0.0, "must be in (0, 1]"),
    (Rule(low=0.0, high=1.0), math.nan, "must be in [0, 1]"),  # NaN fails every comparison
    (Rule(high=5), 6, "must be <= 5"),
    (Rule(choices=("a", "b")), "a", None),
    (Rule(choices=("a", "b")), "c", "must be one of a, b"),
    (Rule(low=1), "text", None),  # a type the rule does not speak of: _coerce's business
])
def test_rule_violation(rule, value, expected):
    assert rule.violation(value) == expected


def test_defaults_presets_and_search_spaces_satisfy_the_rules():
    """Every shipped configuration resolves, and so does each end of each search space (a
    sweep must never sample a value the model refuses)."""
    for name in MODELS:
        spec = get_model_spec(name)
        for preset in [None, *spec.presets]:
            spec.resolve(preset)
        for key, entry in spec.search_space.items():
            values = entry["choices"] if entry["type"] == "categorical" else \
                [entry["low"], entry["high"]]
            for value in values:
                spec.resolve(None, {key: value})


def test_every_numeric_parameter_has_a_rule():
    """A new numeric parameter must declare its valid values (in PARAM_RULES, or by a name
    pattern); free-form ones (names, switches) are listed so that they stay visible."""
    missing, free = [], []
    for name in MODELS:
        for key, value in get_model_spec(name).all_defaults().items():
            if param_rule(name, key) is None:
                (missing if _numeric(value) else free).append(f"{name}.{key}={value!r}")
    print("parameters without a rule (free-form):", ", ".join(free))
    assert not missing, f"numeric parameters without a rule: {missing}"


@pytest.mark.parametrize("key, expected", [
    ("window", "must be >= 1"),  # named by a counting baseline (h-ties)
    ("embedding_size", "must be >= 1"),  # a RecBole model's, through a generic entry
    ("num_layers", "must be >= 1"),
    ("dropout_prob", "must be in [0, 1)"),
    ("global_ratio", "must be in [0, 1]"),  # RecBole FEARec's default is 1: a closed share
    ("block_num", "must be >= 1"),
    ("sampling_steps", "must be >= 0"),
    ("fine_tune_lr", "must be > 0"),
    ("stage2_learning_rate", "must be > 0"),  # a learning rate, not a [0, 1) share
    ("contrast_weight", "must be >= 0"),
])
def test_rules_by_name_for_parameters_added_later(key, expected):
    rule = param_rule("some-future-model", key)
    assert rule is not None and rule.violation(-1) == expected
    assert PATTERN_RULES  # the patterns are what gives these names a rule


def test_resolve_messages_name_model_parameter_and_value():
    sasrec = get_model_spec("sasrec")
    with pytest.raises(ConfigError) as e:
        sasrec.resolve(None, {"hidden_size": -3})
    assert str(e.value) == "model 'sasrec': hidden_size must be >= 1, got -3"
    with pytest.raises(ConfigError) as e:
        sasrec.resolve(None, {"hidden_size": 30, "n_heads": 4})  # 30 heads-width 7.5
    assert str(e.value) == ("model 'sasrec': hidden_size must be a multiple of n_heads, "
                            "got hidden_size=30, n_heads=4")
    assert sasrec.resolve(None, {"hidden_size": 32, "n_heads": 4})["hidden_size"] == 32
    with pytest.raises(ConfigError, match="'learning_rate' must be a finite number, got inf"):
        sasrec.resolve(None, {"learning_rate": math.inf})
    with pytest.raises(ConfigError, match="fusion must be one of concat, mean, got 'external'"):
        get_model_spec("clip_sasrec").resolve(None, {"fusion": "external"})
    # the same name, another meaning: VLM2Rec's fusion is where the modalities meet
    assert get_model_spec("vlm2rec").resolve(None, {"fusion": "internal"})["fusion"] == "internal"
    with pytest.raises(ConfigError) as e:  # the stage model's settings, checked up front
        get_model_spec("vlm2rec_sasrec").resolve(None, {"stage1_overrides": {"tau": 0}})
    assert "stage 'vlm2rec'" in str(e.value) and "tau must be > 0, got 0.0" in str(e.value)


def _bad_values(model: str, key: str, default) -> list[str]:
    """``--set`` values (YAML text) that ``key`` must refuse: a wrong type, and each side of
    its rule just outside the valid range (an open end itself), or an unknown choice."""
    if isinstance(default, bool):
        out = ["maybe"]
    elif _numeric(default):
        out = ["abc"]
    else:  # str, dict: a number is the wrong type
        out = ["3"]
    rule = param_rule(model, key)
    if rule is None:
        return out
    if rule.choices is not None:
        out.append("no-such-choice")
    step = 1 if isinstance(default, int) else 0.5
    if rule.low is not None:
        out.append(str(rule.low if rule.low_open else rule.low - step))
    if rule.high is not None:
        out.append(str(rule.high if rule.high_open else rule.high + step))
    return out


@pytest.mark.parametrize("model", MODELS)
def test_fuzz_every_set_key_out_of_range_exits_2_with_one_line(model, tmp_path, capsys):
    base = ["run", "--models", model, "--dry-run", "--no-tracking",
            "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")]
    assert main(base) == 0  # the control: without a bad value the plan resolves
    assert f"model {model}:" in capsys.readouterr().out
    cases, wrong = 0, []
    for key, default in get_model_spec(model).all_defaults().items():
        for bad in _bad_values(model, key, default):
            rc = main([*base, "--set", f"{key}={bad}"])
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            cases += 1
            if not (rc == 2 and len(lines) == 1 and lines[0].startswith("bench: error:")
                    and key in lines[0] and not out):
                wrong.append((key, bad, rc, err.strip()[-200:]))
    assert not wrong, wrong
    assert cases >= len(get_model_spec(model).all_defaults())
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_bad_parameter_fails_before_any_data_is_built(tmp_path, capsys):
    """Without --dry-run too: exit 2 before the dataset is generated or a result folder made."""
    rc = main(["run", "--models", "sasrec", "--set", "attn_dropout_prob=1.5", "--no-tracking",
               "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d"), "-q"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == \
        "bench: error: model 'sasrec': attn_dropout_prob must be in [0, 1), got 1.5"
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()
