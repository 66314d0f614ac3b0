"""OS names for threads and processes (`mailhook.thread_names`): what `top -H` and `ps -L` show."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from mailhook.thread_names import LONGEST, NamedThread, name_this_thread, os_name

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names threads through /proc and prctl")


def _comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().rstrip("\n")


def test_os_name_shortens_the_prefix_and_keeps_the_kernels_15_bytes() -> None:
    assert os_name("mailhook-writer") == "mh-writer"
    assert os_name("mailhook-worker-12") == "mh-worker-12"
    assert os_name("owner-watch") == "owner-watch"
    assert os_name("mailhook-imap-INBOX/CallFire/Texts") == "mh-imap-INBOX/C"
    assert len(os_name("x" * 40).encode()) == LONGEST
    # A name cut inside a character loses the whole character, not just its last bytes.
    assert os_name("mailhook-imap-Überweisungen") == "mh-imap-Überwe"


@linux_only
def test_a_named_thread_carries_its_name_for_the_kernel_while_it_runs() -> None:
    seen: list[str] = []
    thread = NamedThread(target=lambda: seen.append(_comm(threading.get_native_id())), name="mailhook-writer")
    thread.start()
    thread.join()
    assert seen == ["mh-writer"]


@linux_only
def test_naming_a_thread_leaves_the_other_threads_of_the_process_as_they_were() -> None:
    before = _comm(threading.get_native_id())
    thread = threading.Thread(target=name_this_thread, args=("mailhook-reader-3",))
    thread.start()
    thread.join()
    assert _comm(threading.get_native_id()) == before
