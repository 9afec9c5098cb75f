import sys
import types

import pytest

from robench import registry as reg
from robench.errors import RobenchError
from robench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, Registry


def test_register_get_describe():
    r = Registry("widget")

    @r.register("a")
    class A:
        """Does a thing.

        More detail."""

    assert r.get("a") is A
    assert "a" in r
    assert r.describe("a") == "Does a thing."


def test_unknown_name_lists_valid_ones():
    r = Registry("widget")
    r.register("beta", object())
    r.register("alpha", object())
    with pytest.raises(RobenchError, match=r"unknown widget 'gamma'; valid: alpha, beta"):
        r.get("gamma")


def test_duplicate_registration_is_an_error():
    r = Registry("widget")
    r.register("a", int)
    with pytest.raises(RobenchError, match="registered twice"):
        r.register("a", str)


def test_builtins_registered():
    assert "pgd" in ATTACKS.names()
    assert {"mnist", "cifar10", "imagenet"} <= set(DATASETS.names())
    assert {"cw_mnist", "small_cnn", "cw_cifar", "resnet18", "preact_resnet18", "wrn_34_10", "vgg16",
            "resnet50", "inception_v3"} <= set(MODELS.names())
    assert "none" in DEFENSES.names()
    for r in (ATTACKS, DATASETS, MODELS, DEFENSES):  # every plugin has a one-line description
        for name in r.names():
            assert r.describe(name), f"{r.kind} {name} has no docstring"


def test_entry_point_plugins_are_loaded(monkeypatch):
    mod = types.ModuleType("robench_test_plugin")

    def register():
        from robench.attacks.base import Attack

        @ATTACKS.register("ep_test_attack")
        class EPAttack(Attack):
            """An attack from a third-party package."""

    mod.register = register
    monkeypatch.setitem(sys.modules, "robench_test_plugin", mod)

    class EP:
        name, value = "demo", "robench_test_plugin:register"

        def load(self):
            return mod.register

    monkeypatch.setattr(reg.metadata, "entry_points", lambda group: [EP()] if group == reg.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(reg, "_loaded", False)
    try:
        assert ATTACKS.describe("ep_test_attack") == "An attack from a third-party package."
    finally:
        ATTACKS._items.pop("ep_test_attack", None)


def test_broken_entry_point_fails_with_one_line(monkeypatch):
    class EP:
        name, value = "broken", "nope.module:thing"

        def load(self):
            raise ImportError("No module named 'nope'")

    monkeypatch.setattr(reg.metadata, "entry_points", lambda group: [EP()])
    monkeypatch.setattr(reg, "_loaded", False)
    with pytest.raises(RobenchError, match="plugin entry point 'broken'.*failed to load"):
        ATTACKS.get("does_not_exist")


# ---------------------------------------------------------------- declared parameter schemas
def _numeric(tp):
    import typing
    return tp in (int, float) or any(a in (int, float) for a in typing.get_args(tp))


def test_every_plugin_parameter_has_a_checkable_type_and_numbers_a_range():
    """Attack, defense and model constructors: every parameter is annotated with a type the validator
    understands, every numeric one has a declared range, and every default passes its own schema."""
    import inspect

    problems = []
    for kind in ("attacks", "defenses", "models"):
        for name, obj in reg.REGISTRIES[kind].items():
            for p, (tp, rng, default) in reg.param_schema(obj).items():
                if p in reg.RESERVED_PARAMS:
                    continue
                if tp is None or not reg.understood(tp):
                    problems.append(f"{kind} {name}.{p}: type {tp} is not checkable")
                elif _numeric(tp) and rng is None:
                    problems.append(f"{kind} {name}.{p}: numeric without a declared range")
                elif default is not inspect.Parameter.empty and reg.check_value(default, tp, rng):
                    problems.append(f"{kind} {name}.{p}: default {default!r} fails its schema")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name,params,msg", [
    ("pgd", {"step_size": float("nan")}, "attack.params.step_size must be a finite number > 0 or null, got 'nan'"),
    ("pgd", {"steps": 1.5}, "attack.params.steps must be an integer >= 1, got '1.5'"),
    ("pgd", {"steps": True}, "attack.params.steps must be an integer >= 1"),
    ("pgd", {"random_start": "maybe"}, "attack.params.random_start must be true or false, got 'maybe'"),
    ("pgd", {"restarts": 0}, "attack.params.restarts must be an integer >= 1, got '0'"),
    ("square", {"p_init": float("inf")}, "attack.params.p_init must be a finite number in (0, 1] or null"),
    ("square", {"p_init": 1.5}, "attack.params.p_init must be a finite number in (0, 1] or null"),
    ("nes", {"momentum": 1.0}, "attack.params.momentum must be a finite number in [0, 1)"),
    ("zoo", {"lr": "abc"}, "attack.params.lr must be a finite number > 0, got 'abc'"),
    ("genattack", {"pop_size": 2 ** 70}, "attack.params.pop_size must be an integer >= 2"),
    ("pgd", {"wings": 3}, "attack 'pgd' has no parameter(s) wings; valid: steps"),
])
def test_attack_params_are_checked_against_the_schema(name, params, msg):
    with pytest.raises(RobenchError) as e:
        reg.instantiate(ATTACKS, name, params, "attack")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_defense_and_model_params_are_checked():
    with pytest.raises(RobenchError, match=r"defense.params.quality must be an integer in \[1, 100\], got '0'"):
        reg.instantiate(DEFENSES, "jpeg", {"quality": 0}, "defense")
    with pytest.raises(RobenchError, match=r"model.params.depth must be an integer >= 1, got '2.5'"):
        reg.validate_params(MODELS, "small_cnn", {"depth": 2.5}, "model")
    with pytest.raises(RobenchError, match=r"model.params.num_classes is set by the dataset"):
        reg.validate_params(MODELS, "small_cnn", {"num_classes": 3}, "model")
    assert reg.instantiate(ATTACKS, "pgd", {"steps": 3, "step_size": 1}, "attack").steps == 3  # ints are numbers
