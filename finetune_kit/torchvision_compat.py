"""torchvision beside a torch it was not built for: let its Python half import.

PyPI's Linux torchvision wheels are CUDA builds. Beside a CPU torch (this project's machines install torch 2.13's CPU
build from local disk) their compiled ops cannot load; torchvision tolerates that except for two fake-kernel
registrations (`nms`, `qnms`) that then fail its whole import, and with it transformers (whose image utilities import
torchvision whenever it is installed) and timm. What we use of torchvision is pure Python: timm's transforms and
`FrozenBatchNorm2d`. So the first time torchvision is imported, we try its ops library ourselves and, only if it
cannot load, declare those two schemas; calling torchvision's nms would still fail, and nothing here calls it.

`install()` (run by `import finetune_kit`) only adds an import hook: torch is not imported until torchvision is.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_SCHEMAS = {"nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"}
_library = None  # the torch.library fragment holding the schemas: dropping it would remove them


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            uninstall()
            declare_missing_ops()
        # None: the regular finders import it


def install() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BeforeTorchvision)]


def declare_missing_ops() -> bool:
    """Declare nms / qnms when torchvision's compiled ops cannot load; True when it did."""
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations or _library is not None:
        return False
    libraries = [p for folder in spec.submodule_search_locations for p in Path(folder).glob("_C*.so")]
    import torch

    try:
        if libraries:
            torch.ops.load_library(str(libraries[0]))  # torchvision loads the same file next: a no-op then
            return False
    except OSError:
        pass
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    return True
