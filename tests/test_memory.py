"""release_memory: a Ctrl-C during its garbage collection is delivered after it, not dropped."""

import gc
import os
import signal
import weakref

import pytest

from saelens_amort.memory import release_memory


class _Cycle:
    pass


def test_ctrl_c_during_collection_reaches_the_caller():
    gc.collect()
    node = _Cycle()
    node.self = node  # only the cycle collector frees it: its callback runs inside gc.collect
    ref = weakref.ref(node, lambda _: os.kill(os.getpid(), signal.SIGINT))
    del node
    with pytest.raises(KeyboardInterrupt):
        release_memory()
    assert ref() is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    release_memory()  # and nothing is pending
