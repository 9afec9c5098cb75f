"""robench's Hydra launcher on Ray's task API (``launcher=ray``): see ray_launcher.py."""
from __future__ import annotations


def expose() -> None:
    """Make this plugin visible to Hydra's plugin scan, whatever the install.

    Hydra finds launchers by listing the folders of the ``hydra_plugins`` namespace package. An editable
    install (``pip install -e .``, setuptools >= 64, as ``make install`` does) maps this package through
    an import hook that imports it but cannot be listed, so Hydra would not see the launcher: its real
    folder is added to the namespace's path (a no-op for a regular install, where it is there already).
    Where Hydra has scanned before this call (one process running several Hydra commands), the launcher
    class and its config are registered directly."""
    from pathlib import Path

    import hydra_plugins

    folder = str(Path(__file__).resolve().parent.parent)
    if folder not in [str(p) for p in hydra_plugins.__path__]:
        hydra_plugins.__path__.append(folder)
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton

    if Plugins in Singleton._instances:  # scanned already: add the class it may have missed
        from hydra_plugins.robench_ray_launcher.ray_launcher import RobenchRayLauncher

        name = f"{RobenchRayLauncher.__module__}.{RobenchRayLauncher.__name__}"
        Plugins.instance().class_name_to_class.setdefault(name, RobenchRayLauncher)
