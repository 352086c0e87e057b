"""Module attributes imported on first use (PEP 562), so a light import stays light."""
from __future__ import annotations

from importlib import import_module
from typing import Callable, Dict, List, Mapping, Tuple


def lazy_attributes(namespace: Dict[str, object], where: Mapping[str, str]) -> Tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for a module whose `namespace` (its globals()) gets each
    name of `where` (name -> the module defining it) from that module on first use."""
    module = namespace["__name__"]

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(import_module(where[name]), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
