"""Makes `lm_eval --model pasture` work: lm-eval 0.4.13 discovers models only through its own
registry (no entry points), so the `pasture-lm-eval.pth` file installed with pasture imports this
module at interpreter start. It adds an import hook that, right after `lm_eval.api.registry`
loads, registers "pasture" as a lazy name (nothing heavy is imported until the model is used).
Also registers lm-eval's own models then, which lm-eval would otherwise only do for an empty registry.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "lm_eval.api.registry"
ADAPTER = "pasture.eval.lm_eval_adapter:PastureLM"


def _register(module) -> None:
    import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models first)

    if "pasture" not in module.model_registry:
        module.model_registry.register("pasture", target=ADAPTER)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    if TARGET in sys.modules:
        _register(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
