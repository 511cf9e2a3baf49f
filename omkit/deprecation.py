"""Keyword arguments renamed to omkit's one vocabulary (``docs/ARCHITECTURE.md``, "One
vocabulary"): the old name keeps working for one release, with a ``DeprecationWarning``
naming the new one. Standard library only, so that every layer may use it."""
from __future__ import annotations

import functools
import warnings


def renamed_keywords(**renames: str):
    """Decorate a function whose keyword ``old`` is now ``new`` (``old="new"``): a call with
    ``old=`` warns and passes the value as ``new=``; both at once is a ``TypeError``. The
    function's signature (``inspect.signature``) shows the new names only; the renames are
    kept in its ``renamed_keywords`` attribute."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{func.__qualname__}() got {old}= (deprecated) and {new}=; pass {new}= only")
                    warnings.warn(f"{func.__qualname__}({old}=...) is deprecated: use {new}=", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        wrapper.renamed_keywords = {**getattr(func, "renamed_keywords", {}), **renames}
        return wrapper

    return decorate
