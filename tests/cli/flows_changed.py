"""``tests.cli.flows``'s ``letters``, changed so that its stored runs no longer replay."""

from __future__ import annotations

import replay

app = replay.App("cli-flows-changed")


@app.step()
def letter(name: str) -> str:
    return name.upper()


@app.step()
def shout(name: str) -> str:
    return name.upper() + "!"


@app.workflow()
async def letters(ctx: replay.Context) -> list[str]:
    return [await shout("a")] + [await letter(n) for n in "bcd"]
