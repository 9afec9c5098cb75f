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
