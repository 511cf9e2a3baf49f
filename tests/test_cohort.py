"""The cohort queue of ``omkit predict`` under torchrun (omkit.inference.cohort): claims taken
once, a dead process's case taken over, a live process's left alone; and the background
read of the next case."""
from __future__ import annotations

import itertools
import os
import time

import pytest

from omkit.inference.cohort import CaseQueue, prefetched

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock claims are POSIX")


def test_each_case_is_claimed_once_across_processes(tmp_path):
    keys = [f"case{i}" for i in range(6)]
    a, b = CaseQueue(tmp_path, "run", keys), CaseQueue(tmp_path, "run", keys)
    taken = {"a": [], "b": []}
    it_a, it_b = iter(itertools.chain(a, a.leftovers())), iter(itertools.chain(b, b.leftovers()))
    # two processes taking turns: each gets the next case the other has not claimed
    for _ in range(3):
        for name, queue, it in (("a", a, it_a), ("b", b, it_b)):
            key = next(it)
            taken[name].append(key)
            queue.done(key)
    assert sorted(taken["a"] + taken["b"]) == keys and not set(taken["a"]) & set(taken["b"])
    assert list(it_a) == [] and list(it_b) == []
    a.remove()
    assert not (tmp_path / ".omkit-claims").exists()


def test_a_dead_processes_case_is_taken_over_a_live_ones_is_not(tmp_path):
    keys = ["live", "dead", "free"]
    live, dead = CaseQueue(tmp_path, "run", keys), CaseQueue(tmp_path, "run", keys)
    assert next(iter(live)) == "live"  # claimed and held (the lock stays while the file is open)
    dead_iter = iter(dead)
    assert next(dead_iter) == "dead"
    os.close(dead._held.pop("dead"))  # the process dies: its lock goes, the claim is not done
    other = CaseQueue(tmp_path, "run", keys)
    it = itertools.chain(other, other.leftovers())
    assert [next(it), next(it)] == ["dead", "free"]  # the dead one's case again, the live one's not
    other.done("dead")
    other.done("free")
    live.done("live")
    assert list(it) == []  # it waited for the live one's case until that was done


def test_a_case_given_back_is_taken_by_a_process_waiting_for_the_rest(tmp_path):
    import threading

    keys = ["a", "b"]
    stopping, going = CaseQueue(tmp_path, "run", keys), CaseQueue(tmp_path, "run", keys)
    assert next(iter(stopping)) == "a"
    it = itertools.chain(going, going.leftovers())
    assert next(it) == "b"
    going.done("b")
    threading.Timer(0.3, stopping.release).start()  # stops at a failure: gives "a" back
    assert next(it) == "a"  # waited, then took it
    going.done("a")
    assert list(it) == []


def test_prefetched_reads_the_next_item_while_the_caller_works(tmp_path):
    started = {}

    def load(item):
        started[item] = time.perf_counter()
        if item == 2:
            raise ValueError("unreadable")
        return item * 10

    seen = []
    for item, loaded, error in prefetched(range(4), load):
        seen.append((item, loaded, None if error is None else str(error)))
        time.sleep(0.05)  # the caller's work on this item
        if item + 1 < 4:
            assert item + 1 in started  # the next one was read meanwhile
    assert seen == [(0, 0, None), (1, 10, None), (2, None, "unreadable"), (3, 30, None)]
