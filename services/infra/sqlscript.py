"""Split a SQL script into statements, for drivers (asyncpg) that prepare one statement at a time."""

from __future__ import annotations

from collections.abc import Callable


def split_statements(script: str) -> list[str]:
    """Split on `;` outside dollar-quoted bodies (`$$ ... $$`), single quotes and `--` comments."""
    statements: list[str] = []
    current: list[str] = []
    in_dollar = in_quote = False
    i = 0
    while i < len(script):
        ch = script[i]
        if not in_quote and script.startswith("$$", i):
            in_dollar = not in_dollar
            current.append("$$")
            i += 2
            continue
        if not in_dollar and not in_quote and script.startswith("--", i):
            end = script.find("\n", i)
            i = len(script) if end == -1 else end
            continue
        if not in_dollar and ch == "'":
            in_quote = not in_quote
        if ch == ";" and not in_dollar and not in_quote:
            statement = "".join(current).strip()
            if statement:
                statements.append(statement)
            current = []
        else:
            current.append(ch)
        i += 1
    tail = "".join(current).strip()
    if tail:
        statements.append(tail)
    return statements


def execute_script(execute: Callable[[str], object], script: str) -> None:
    """Run each statement of `script` (a migration passes `op.execute`)."""
    for statement in split_statements(script):
        execute(statement)
