"""lvd.pc._cpu.tune_malloc: what reaches glibc's mallopt."""

import ctypes
import sys

import pytest

from lvd.pc import _cpu


class FakeLibc:
    """Records mallopt's declared types and the C values its arguments convert to."""

    def __init__(self):
        self.calls = []
        outer = self

        class Mallopt:
            argtypes = None
            restype = None

            def __call__(self, *args):
                assert self.argtypes is not None, "mallopt called before its argtypes were declared"
                # what ctypes would pass: each argument converted to its declared C type
                outer.calls.append(tuple(t(a).value for t, a in zip(self.argtypes, args)))
                return 1

        self.mallopt = Mallopt()


def test_mallopt_arguments_are_c_ints_and_arrive_unchanged(monkeypatch):
    monkeypatch.delenv("LVD_NO_MALLOPT", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    libc = FakeLibc()
    assert _cpu.tune_malloc(libc)
    assert libc.mallopt.argtypes == [ctypes.c_int, ctypes.c_int]
    assert libc.mallopt.restype is ctypes.c_int
    assert libc.calls == list(_cpu.MALLOPT)
    for param, value in _cpu.MALLOPT:
        assert 0 < value < 2**31 and ctypes.c_int(value).value == value
    assert dict(_cpu.MALLOPT)[-1] >= 1 << 30  # the trim threshold stays large (not 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_real_glibc_accepts_the_settings(monkeypatch):
    monkeypatch.delenv("LVD_NO_MALLOPT", raising=False)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        pytest.skip("no libc.so.6")
    assert _cpu.tune_malloc(libc)
