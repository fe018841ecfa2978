"""gradfit._fused, the compiled one-pass kernel (built by setup.py), found without importing torch."""

from __future__ import annotations

ABI = 1  # the interface version: GRADFIT_KERNEL_ABI in _fused.c


def usable(module):
    """``module`` if it is a build of this version's _fused.c, else None (an editable install keeps an
    old build until ``pip install -e .`` runs again: gradfit then goes without it rather than call it wrongly)."""
    return module if module is not None and getattr(module, "ABI", None) == ABI else None


def find():
    """(the kernel module or None, its state in words for ``gradfit --version``)."""
    try:
        from gradfit import _fused  # (imported here for start-up time)
    except ImportError:
        return None, "not built (no C compiler at install: linear epochs use torch's products)"
    if usable(_fused) is None:
        return None, "built from another version of gradfit, not used (run pip install -e . again)"
    return _fused, "built"
