"""Which kernels the engine runs in this test process: moh/native.c, or its torch formulation.

tests/conftest.py runs the whole suite on one of them per process (`MOH_NATIVE`, default: the
C kernels where they build); tests/moh/test_native.py compares both in one process."""

from moh import native


def native_on() -> bool:
    return native.lib() is not None
