"""The extraction byte budget: holders stay within it, waiters go in arrival order, oversize runs alone."""

from __future__ import annotations

import asyncio

from mailhook.budget import ByteBudget


async def _hold(budget: ByteBudget, size: int, log: list[str], name: str, release: asyncio.Event) -> None:
    async with budget.hold(size):
        log.append(f"+{name}")
        assert budget.used <= budget.limit
        await release.wait()
    log.append(f"-{name}")


def test_holders_never_exceed_the_budget_and_waiters_go_in_arrival_order() -> None:
    async def main() -> list[str]:
        budget = ByteBudget(10)
        log: list[str] = []
        gates = {name: asyncio.Event() for name in "abcd"}
        tasks = [asyncio.create_task(_hold(budget, size, log, name, gates[name]))
                 for name, size in (("a", 6), ("b", 6), ("c", 1), ("d", 4))]
        await asyncio.sleep(0)
        # b waits for room; c and d, though they would fit, wait behind it (no starving a large one).
        assert (log, budget.used) == (["+a"], 6)
        gates["a"].set()
        await asyncio.sleep(0.01)
        # b and c fit (7); d would make 11 and waits.
        assert budget.used == 6 + 1 and log == ["+a", "-a", "+b", "+c"]
        gates["c"].set()
        await asyncio.sleep(0.01)
        assert log[4:] == ["-c", "+d"] and budget.used == 10
        gates["b"].set()
        gates["d"].set()
        await asyncio.gather(*tasks)
        assert budget.used == 0
        return log

    asyncio.run(main())


def test_a_holder_larger_than_the_budget_runs_alone() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        log: list[str] = []
        big, small = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(_hold(budget, 1000, log, "big", big))
        await asyncio.sleep(0)
        second = asyncio.create_task(_hold(budget, 1, log, "small", small))
        await asyncio.sleep(0.01)
        assert log == ["+big"] and budget.used == 10
        big.set()
        small.set()
        await asyncio.gather(first, second)
        assert log == ["+big", "-big", "+small", "-small"] and budget.used == 0

    asyncio.run(main())


def test_a_holder_cancelled_while_waiting_leaves_the_queue() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        log: list[str] = []
        gate = asyncio.Event()
        first = asyncio.create_task(_hold(budget, 8, log, "a", gate))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(_hold(budget, 8, log, "b", asyncio.Event()))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        gate.set()
        await first
        assert log == ["+a", "-a"] and budget.used == 0 and not budget._waiters

    asyncio.run(main())


def test_a_holder_cancelled_while_holding_gives_its_bytes_to_the_next() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        log: list[str] = []
        first = asyncio.create_task(_hold(budget, 8, log, "a", asyncio.Event()))
        await asyncio.sleep(0)
        gate = asyncio.Event()
        second = asyncio.create_task(_hold(budget, 8, log, "b", gate))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0.01)
        assert log == ["+a", "+b"] and budget.used == 8
        gate.set()
        await second
        assert budget.used == 0

    asyncio.run(main())


def test_a_thread_beside_the_loop_waits_for_its_turn_and_gives_the_bytes_back() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        log: list[str] = []
        gate = asyncio.Event()
        first = asyncio.create_task(_hold(budget, 8, log, "loop", gate))
        await asyncio.sleep(0)

        def in_thread() -> None:
            with budget.hold_blocking(5):
                log.append("+thread")
                assert budget.used == 5
            log.append("-thread")

        thread = asyncio.get_running_loop().run_in_executor(None, in_thread)
        await asyncio.sleep(0.05)
        assert log == ["+loop"]  # 8 + 5 > 10: the thread waits
        gate.set()
        await first
        await thread
        await asyncio.sleep(0)
        assert log == ["+loop", "-loop", "+thread", "-thread"] and budget.used == 0

    asyncio.run(main())


def test_without_a_loop_a_thread_holds_nothing_and_never_blocks() -> None:
    budget = ByteBudget(10)
    with budget.hold_blocking(50):
        assert budget.used == 0
