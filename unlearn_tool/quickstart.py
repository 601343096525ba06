"""The built-in default job: train a small MLP on scikit-learn digits (if needed), forget digit 3, show before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from .errors import UnlearnError

DEFAULT_REQUEST = """\
# Written by `unlearn quickstart`: forget every sample of digit 3 (scikit-learn digits, built in).
version: 1
id: quickstart-digits-forget-3
model: {arch: "builtin:mlp", kwargs: {num_classes: 10}}
data:
  train: {source: "sklearn:digits"}
  test: {source: "sklearn:digits"}
forget: {classes: [3]}
method: {name: rfa, params: {}}
seed: 0
"""


def run_quickstart(folder: Path, device: str = "auto", progress: Optional[Callable[[str, int, int], None]] = None) -> dict[str, Any]:
    """Returns the apply summary; re-running reuses the trained model and overwrites only the unlearned output."""
    from .pipeline import prepare, train_checkpoint
    from .training import TrainConfig

    folder.mkdir(parents=True, exist_ok=True)
    request = folder / "request.yaml"
    if not request.exists():
        request.write_text(DEFAULT_REQUEST)
    model = folder / "digits_mlp.safetensors"
    trained = False
    if not model.exists():
        train_checkpoint(prepare(request, None, device=device), model, TrainConfig(), progress=progress)
        trained = True
    from .commands import apply as apply_command  # as `unlearn apply --force` does it: with its ledger, so `ledger verify` works

    try:
        outcome = apply_command(request, model, output=folder / "digits_mlp.unlearned.safetensors", force=True, device=device,
                                progress=progress)
    except UnlearnError as e:  # apply's fixes name its options (--ledger, --output), which quickstart does not have
        raise type(e)(quickstart_fix(str(e))) from None
    return {**outcome.summary(), "trained_original": trained}


def quickstart_fix(message: str) -> str:
    """An apply error's fix in quickstart's terms: its only choice is the folder (--dir)."""
    for option in ("--ledger", "--output"):
        message = message.replace(f"pass --force to overwrite it or choose another {option}", "remove it or choose another --dir")
        message = message.replace(f"choose another {option}", "remove it or choose another --dir")
    return message


def copy_examples(folder: Path) -> list[Path]:
    """Copy the shipped example requests (and their indices files) into a new folder; never over existing files."""
    import shutil

    from .errors import OutputError

    source = Path(__file__).with_name("examples")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputError(f"{folder} exists and is not an empty folder; give a new folder for the examples")
    if not folder.parent.is_dir():
        raise OutputError(f"{folder.parent} does not exist; create it or give another folder")
    folder.mkdir(exist_ok=True)
    copied = []
    for path in sorted(source.iterdir()):
        if path.suffix in (".yaml", ".txt"):
            shutil.copyfile(path, folder / path.name)
            copied.append(folder / path.name)
    return copied
