"""How an exact artifact folder is put in place: a signal during the replacement, and the files' permissions."""

from __future__ import annotations

import os
import signal
import stat

from conftest import invoke


def test_a_signal_while_force_removes_the_replaced_folder_reports_the_new_one_and_leaves_no_temporary_folder(exact_dir, tmp_path, monkeypatch):
    """SIGTERM after the new folder was renamed into place, while the replaced one was being removed, said "no output
    was written" (it had been) and left the replaced folder behind as `.unlearn-*.old`: the rename, the removal and
    the note now finish before the signal is acted on."""
    import shutil

    out = tmp_path / "deleted"
    assert invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--retrain-affected", "--quiet").exit_code == 0
    retrained = (out / "manifest.json").read_text()
    real = shutil.rmtree

    def sigterm_then_remove(path, *args, **kwargs):
        if str(path).endswith(".old"):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", sigterm_then_remove)
    r = invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--force", "--quiet")
    assert r.exit_code == 143 and f"{out} was written before that" in r.stderr, r.stderr
    assert (out / "manifest.json").read_text() != retrained  # the deactivation replaced the retrained folder
    monkeypatch.setattr(shutil, "rmtree", real)
    assert invoke("inspect", out, "--json").exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_component_files_get_a_normal_files_permissions(exact_dir, tmp_path):
    """Components written by training (and by --retrain-affected) were 0600, while the folder's other files and the
    components a deactivation copies were 0666 minus the umask: safetensors creates its files 0600."""
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    out = tmp_path / "retrained"
    assert invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--retrain-affected", "--quiet").exit_code == 0
    for folder in (exact_dir / "s3t", exact_dir / "sisa", out):
        modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in folder.rglob("*") if f.is_file()}
        assert set(modes.values()) == {oct(want)}, (folder, modes)
