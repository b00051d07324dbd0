"""Loading the package's C kernels (built by colcon from ``csrc/``) through ctypes: one place
for finding the built module, declaring the signatures and saying what runs without it."""

import ctypes
import importlib.util
import os
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


_VP, _I64, _INT, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
#: ``FLUXSHARD_ENGINE_KERNELS=torch`` switches the engine's C kernels off: every caller runs
#: its reference path (numpy / torch; benchmarks, tests).
ENV = 'FLUXSHARD_ENGINE_KERNELS'
#: the per-frame kernels called through ctypes (the per-layer ones are the module's fast-call
#: functions: ``compiled._fx``)
ENGINE_SIGNATURES = {
    'fs_diff_rows': [_VP, _VP, _I64, _I64, _VP],
    'fs_input_blocks': [_VP, _VP, _INT, _INT, _INT, _VP, _I64, _I64, _INT, _INT],
    'fs_warp_image': [_VP, _VP, _INT, _INT, _INT, _INT, _INT, _INT, _VP, _VP],
    'fs_paste_blocks': [_VP, _VP, _INT, _INT, _INT, _INT, _INT, _VP, _INT],
}


#: Whether the engine's kernels are used: ``FLUXSHARD_ENGINE_KERNELS`` at import, then
#: ``use_kernels`` (the tests' reference runs). Read on every kernel call, so a plain global.
KERNELS_ON = os.environ.get(ENV, 'c') != 'torch'
_ENGINE: list = []


def use_kernels(on: bool) -> bool:
    """Switch the engine's C kernels on or off for the process; returns the previous state."""
    global KERNELS_ON
    old, KERNELS_ON = KERNELS_ON, bool(on)
    return old


def engine() -> Optional[ctypes.CDLL]:
    """The engine's kernels (``csrc/engine.c``), or None when not built or switched off."""
    if not KERNELS_ON:
        return None
    if not _ENGINE:
        _ENGINE.append(load('fluxshard_kernels._engine', ENGINE_SIGNATURES,
                            'the engine runs its numpy / torch reference paths'))
    return _ENGINE[0]
