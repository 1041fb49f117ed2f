"""portal.web forks its servers from one preloaded process: what each must own it makes after the
fork, and the launcher refuses to fork with anything a child would share by accident."""

import json
import os
import sys
import threading

import pytest

from portal import web


def test_a_forked_server_gets_its_own_event_loop_and_reactor():
    import daphne.server
    import twisted.internet

    holders = web.reactor_holders()
    assert any(names is vars(daphne.server) for names in holders)
    parent_reactor = sys.modules["twisted.internet.reactor"]
    parent_loop = daphne.server.twisted_loop
    parent_epoll = parent_loop._selector.fileno()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, and leave without pytest's cleanup
        try:
            web.fresh_reactor(holders)
            new = sys.modules["twisted.internet.reactor"]
            seen = {
                "new reactor": new is not parent_reactor,
                "daphne's": daphne.server.reactor is new,
                "twisted's": twisted.internet.reactor is new,
                "its loop": new._asyncioEventloop is daphne.server.twisted_loop,
                "own epoll": daphne.server.twisted_loop._selector.fileno() != parent_epoll,
                "old loop closed": parent_loop.is_closed(),
            }
            os.write(write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    assert seen == dict.fromkeys(["new reactor", "daphne's", "twisted's", "its loop",
                                  "own epoll", "old loop closed"], True)
    # The parent's own are untouched.
    assert sys.modules["twisted.internet.reactor"] is parent_reactor
    assert not parent_loop.is_closed()


def test_the_launcher_does_not_fork_while_a_thread_runs():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="stray", daemon=True)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="stray"):
            web.preload()
    finally:
        stop.set()
        thread.join()
