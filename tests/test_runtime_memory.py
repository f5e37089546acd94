import sys

import pytest

from cyclepose_deploy.memory import limit_malloc_arenas


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt exists on Linux only")
def test_malloc_arenas_are_capped_on_glibc() -> None:
    assert limit_malloc_arenas(2) is True


def test_off_linux_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert limit_malloc_arenas(2) is False
