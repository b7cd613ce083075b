"""Every docstring example in the package runs and shows what it says (the style guide asks for runnable
examples; a stale one misleads more than none)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import medseg


def test_every_docstring_example_in_the_package_runs():
    names = sorted(m.name for m in pkgutil.walk_packages(medseg.__path__, "medseg.") if m.name != "medseg.__main__")
    failed, attempted = [], 0
    for name in names:
        res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False,
                              report=False)
        attempted += res.attempted
        if res.failed:
            failed.append(f"{name}: {res.failed} of {res.attempted}")
    assert not failed, "docstring examples fail in " + "; ".join(failed)
    assert attempted > 50  # the walk found the package's examples (about 90 when this test was written)
