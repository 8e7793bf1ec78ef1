"""Which kernels the engine runs in a test: moh/native.c, or its torch formulation.

The suite runs with the C kernels where they build (the engine's default). A module that checks
the formulations against their reference runs every test on both with
`pytestmark = pytest.mark.usefixtures("both_kernels")` and `from tests.moh.native_switch import
both_kernels  # noqa: F401` (the fixture must be in the module's namespace)."""

import pytest

from moh import native


def native_on() -> bool:
    return native.lib() is not None


@pytest.fixture(params=["native", "torch"])
def both_kernels(request):
    if request.param == "torch":
        with native.disabled():
            yield "torch"
    else:
        if native.lib() is None:
            pytest.skip(f"moh/native.c not loaded: {native.status()}")
        yield "native"
