"""Only job: install src/pasture-lm-eval.pth into site-packages, for wheels and editable installs,
so that `lm_eval --model pasture` finds pasture's model (lm-eval 0.4.13 reads no entry points;
see src/pasture/eval/lm_eval_hook.py). Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path("src") / "pasture-lm-eval.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name), preserve_mode=0)


class _StrategyWithPth:
    """Wraps setuptools' editable strategy so the editable wheel carries the .pth too."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, wheel, files, mapping) -> None:
        self.inner(wheel, files, mapping)
        wheel.writestr(PTH.name, PTH.read_bytes())

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
