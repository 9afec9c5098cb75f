"""The plugin's own test: robench's attack contract (robench.testing) on a small victim trained in seconds."""
from robench.testing import check_attack, tiny_victim
from robench_example_plugin import ExampleFGSM


def test_example_fgsm_meets_the_contract():
    model, x, y, train = tiny_victim()
    check_attack(lambda: ExampleFGSM(), model, x, y, train=train)
