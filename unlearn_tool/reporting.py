"""What the audit and bench reports share: the report folder, atomic report files, markdown tables, plots.

A report folder is new, empty, or one this tool wrote before (it holds only our report files): a
report never lands among, or replaces, files of the user's.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from .checkpoint import TMP_PREFIX, not_writable, write_bytes
from .errors import OutputError
from .provenance import created_utc, versions  # noqa: F401 (re-exported: reports stamp both)

FIX = "choose another --report-dir"


def check_report_dir(folder: Path, our_files: Iterable[str], outputs: Iterable[Path] = ()) -> Path:
    """Fail before any work if `folder` cannot hold our reports; creates nothing. `outputs`: paths the same run
    publishes (apply's output), which the report folder may not be or be inside."""
    folder = Path(folder)
    ours = list(our_files)
    here = Path(os.path.abspath(folder))
    for out in outputs:
        there = Path(os.path.abspath(out))
        if here == there or there in here.parents:
            raise OutputError(f"report dir {folder} is the output {out} (or inside it); {FIX}")
    if os.path.lexists(folder) and not folder.exists():
        raise OutputError(f"report dir {folder} is a link to nothing; {FIX}")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"report dir {folder} is a file; {FIX}")
    if not folder.exists():
        if folder.parent.exists() and not folder.parent.is_dir():
            raise OutputError(f"report dir parent {folder.parent} is a file, not a folder; {FIX}")
        if not folder.parent.is_dir():
            raise OutputError(f"report dir parent {folder.parent} does not exist; create it or {FIX}")
        problem = not_writable(folder.parent)  # before the work: apply had published its output, then failed here
        if problem:
            raise OutputError(f"cannot create report dir {folder}: {folder.parent} is not writable ({problem}); {FIX}")
        return folder
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith(TMP_PREFIX))
    if not foreign:  # files with our names must be an earlier report's: its JSON (ours[0]) says so, and none is a link
        named = [p for p in folder.iterdir() if p.name in ours]
        if named and (any(p.is_symlink() or not p.is_file() for p in named) or not _our_json(folder / ours[0])):
            foreign = sorted(p.name for p in named)
    if foreign:
        listed = f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
        if any(n.endswith(".json") and _our_json(folder / n) for n in foreign):  # an audit's folder given to bench, or the reverse
            raise OutputError(f"report dir {folder} holds another kind of unlearn report ({listed}); give a new or empty folder, "
                              "or one a previous report of this command wrote")
        raise OutputError(f"report dir {folder} holds files this tool did not write ({listed}); "
                          f"give a new or empty folder, or one a previous report wrote")
    problem = not_writable(folder)
    if problem:
        raise OutputError(f"report dir {folder} is not writable ({problem}); {FIX}")
    return folder


def _our_json(path: Path) -> bool:
    """Whether `path` is a report JSON this tool wrote (its schema is one of ours)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b'"schema": "unlearn.' in head


def prepare_report_dir(folder: Path, our_files: Iterable[str]) -> Path:
    """Check, then create the report folder."""
    folder = check_report_dir(folder, our_files)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create report dir {folder} ({e.strerror}); {FIX}") from None
    return folder


def write_report_files(folder: Path, our_files: Iterable[str], files: dict[str, Callable[[], bytes]]) -> Path:
    """A report's files, all or none: each rendered into a temporary file first, then all renamed into place together,
    signals held and under the folder's lock, so that a signal, an error or a second run writing the same folder never
    leaves one report's JSON beside another's HTML."""
    from .checkpoint import _published, file_mode, publish_lock, stage_beside
    from .interrupts import signals_deferred

    made = not Path(folder).exists()
    folder = prepare_report_dir(folder, our_files)
    staged: dict[Path, Path] = {}
    published = False
    try:
        for name, render in files.items():
            data = render()
            staged[folder / name] = stage_beside(folder / name, lambda tmp, data=data: tmp.write_bytes(data), file_mode(folder / name))
        with publish_lock(folder / next(iter(files))), signals_deferred():
            check_report_dir(folder, our_files)  # again: another run may have put files there meanwhile
            for final, tmp in staged.items():
                os.replace(tmp, final)
            published = True
            _published(folder)  # a signal held meanwhile is told the reports were written
    except OSError as e:
        raise OutputError(f"cannot write the reports in {folder} ({e.strerror or e}); {FIX}") from None
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        if made and not published:  # a render that failed (or a signal) leaves no empty folder it made
            with contextlib.suppress(OSError):
                folder.rmdir()
    return folder


def samples_text(n: int) -> str:
    """'1 sample', '14 samples': a report's count in words."""
    return f"{n} sample{'' if n == 1 else 's'}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # and bidi overrides
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")  # where CommonMark starts raw HTML; `<= 0.02` stays as it is


def shown(text: object) -> str:
    """Foreign text (request ids, paths, metadata) for a report: control characters (a newline, ANSI escapes) as
    \\xNN, so that one value stays one line of a table or a title and writes no raw escape bytes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", str(text))


_MD_PUNCT = re.compile(r"[\\`*\[\]&~|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # what can start emphasis, code, a link or image, an
# entity, strikethrough or a cell's end; an underscore inside a word (forget_acc) starts nothing and stays as it is


def md_text(text: object) -> str:
    """Foreign text for Markdown: shown(), `<` that would open raw HTML (a `<script>` many renderers would run) and
    the punctuation that would make emphasis, code, a link or an image (a remote tracking pixel), an entity or a new
    table cell backslash-escaped, so a request id or a metadata value renders as the characters it is."""
    return _TAG_START.sub("\\\\<", _MD_PUNCT.sub(lambda m: "\\" + m.group(), shown(text)))  # backslashes first, then `<`


def md_table(header: list[str], rows: list[list[str]], align_right: bool = False) -> str:
    """A markdown table; cells are escaped (md_text) so a value stays in its cell."""
    sep = ["---"] + (["---:"] if align_right else ["---"]) * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (no display is ever needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save_png(fig: Any, path: Path, dpi: int = 110) -> None:
    """A benchmark's figure written atomically to `path` (its folder created), as laid out (no tight crop); closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buf.getvalue())


def png_data_uri(fig: Any, dpi: int = 90) -> str:
    """A figure as a data URI, so an HTML report is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode("ascii")
