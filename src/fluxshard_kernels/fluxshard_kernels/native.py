"""Loading the package's C kernels (built by colcon from ``csrc/``) through ctypes: one place
for finding the built module, declaring the signatures and saying what runs without it."""

import ctypes
import importlib.util
import warnings
from typing import Dict, Optional

_LOADED: Dict[str, Optional[ctypes.CDLL]] = {}


def load(module: str, signatures: dict, missing: str) -> Optional[ctypes.CDLL]:
    """The compiled ``module`` (e.g. 'fluxshard_kernels._engine') with ``signatures``
    ({function: argtypes}, all returning void) declared, once per process; None (and the
    ``missing`` warning, once) when it was not built."""
    if module not in _LOADED:
        lib = None
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            lib = ctypes.CDLL(spec.origin)
            for name, args in signatures.items():
                f = getattr(lib, name)
                f.argtypes, f.restype = args, None
        else:
            warnings.warn(f'{module} is not built; {missing} (rebuild with colcon to get the '
                          'C kernels)')
        _LOADED[module] = lib
    return _LOADED[module]
