"""The cycle collector's settings for gateway processes: frozen startup objects, periodic collection.

Each case runs in a fresh interpreter: the settings are process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_settle_freezes_startup_objects_and_still_collects_cycles() -> None:
    out = run(
        """
        import asyncio, gc, time, weakref
        from tailgate import garbage

        class Node:
            pass

        def cycle():
            a, b = Node(), Node()
            a.other, b.other = b, a
            gone = []
            weakref.finalize(a, gone.append, True)
            return gone

        async def main():
            garbage.settle(0.05)
            assert not gc.isenabled() and gc.get_freeze_count() > 0
            gone = cycle()  # unreachable now, but only a collection frees it
            for _ in range(200):
                if gone:
                    break
                await asyncio.sleep(0.01)
            print("collected" if gone else "leaked")

        asyncio.run(main())
        """
    )
    assert out == "collected"
