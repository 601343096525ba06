"""Assertions the CLI tests share."""

from __future__ import annotations

from pathlib import Path

from unlearn_tool.checkpoint import sha256_file


def rejected(result, *fragments: str, code: int = 2) -> str:
    """Exit `code`, exactly one line on stderr starting with 'error: ', naming each fragment; returns the line."""
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def tree(folder: Path) -> dict[str, str]:
    """Every file below `folder` with its sha256: what 'nothing lost, nothing written' is checked against."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
