"""Users' own models and datasets by import path (``"mypkg.models:MyNet"``): the name a config or study spec
gives is imported and registered on first use, in every process that builds the config (pool workers too).

Importing a module runs its code: a spec that names one is as trusted as the module itself.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from typing import Any

from qsfl.errors import ConfigError

IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_import_path(name: Any) -> bool:
    """``package.module:attribute`` (the attribute may be dotted)."""
    return isinstance(name, str) and bool(IMPORT_PATH.match(name))


def load_object(path: str, field: str) -> Any:
    """The object an import path names; ConfigError naming ``field`` when the module or attribute is missing."""
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{field}: cannot import module {module_name!r} of {path!r} ({exc}); is it installed "
                          "or on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{field}: module {module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{field}: {path!r} is not callable (a class or a function is expected)")
    return obj


def registration_params(field: str, registry: Mapping[str, Any], name: Any, obj: Any, replace: bool) -> list[str]:
    """The parameter names of ``obj``, to be registered as ``name`` in ``registry`` (the models' or the datasets');
    ConfigError naming ``field`` for an empty name, a name taken by another object (unless ``replace``), or an
    object without a signature."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{field}: a registered name must be a non-empty string, got {name!r}")
    if name in registry and registry[name] is not obj and not replace:
        raise ConfigError(f"{field}: {name!r} is already registered; pass replace=True to replace it")
    try:
        return list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}: {name!r}: {obj!r} is not a callable with a signature") from None
