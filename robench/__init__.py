"""robench: a benchmark for the adversarial robustness of image classifiers."""

__version__ = "0.1.0"


def __getattr__(name):  # the Python API, imported on first use (the CLI does not pay for it)
    if name in ("evaluate", "Budget", "Result", "load_victim", "load_data"):
        from robench import api

        return getattr(api, name)
    if name == "load_adversarial":
        from robench.evaluation.adversarial import load_adversarial

        return load_adversarial
    if name in ("RobenchError",):
        from robench import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'robench' has no attribute {name!r}")
