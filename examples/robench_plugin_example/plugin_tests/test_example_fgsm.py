"""The plugin's own test: robench's attack contract (robench.testing) on a small victim trained in seconds."""
import sys
from pathlib import Path

from robench.testing import check_attack, tiny_victim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the plugin, importable without installing it
from robench_example_plugin import ExampleFGSM  # noqa: E402


def test_example_fgsm_meets_the_contract():
    model, x, y, train = tiny_victim()
    check_attack(lambda: ExampleFGSM(), model, x, y, train=train)
