"""Issue 7's attack report, one test per finding: exit 2 (or the stated code) with one line, nothing written, inputs untouched.

Every test here failed on the commit before the hardening (a05647b) and passes after it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import invoke, write_request
from helpers import rejected, tree
from unlearn_tool.checkpoint import sha256_file

ROOT = Path(__file__).resolve().parents[2]


def edit_request(path: Path, **changes) -> Path:
    req = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = req
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(req, sort_keys=False))
    return path


@pytest.fixture
def work(digits_dir, tmp_path):
    """A folder holding a copy of the trained checkpoint and a class request: the user's working folder."""
    shutil.copy(digits_dir / "mlp.safetensors", tmp_path / "model.safetensors")
    write_request(tmp_path, {"classes": [3]}, name="req.yaml", method={"name": "rfa", "params": {"epochs": 2, "stop": "epochs"}})
    (tmp_path / "notes.txt").write_text("the user's other files")
    return tmp_path


# ---------------------------------------------------------------- 1. --force never deletes a folder we did not write

def test_force_adapter_output_into_the_inputs_folder_deletes_nothing(work):
    before = tree(work)
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "--adapter-only", "-o", work, "--force", "--quiet")
    rejected(r, "holds the input checkpoint")
    assert tree(work) == before


def test_force_adapter_output_from_the_request_alone_deletes_nothing(work):
    edit_request(work / "req.yaml", output={"mode": "adapter", "path": "."})
    before = tree(work)
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "--force", "--quiet"), "holds the")
    assert tree(work) == before


def test_force_never_replaces_a_folder_of_foreign_files(work, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    (other / "thesis.tex").write_text("years of work")
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "--adapter-only", "-o", other, "--force", "--quiet")
    rejected(r, "did not write")
    assert (other / "thesis.tex").read_text() == "years of work"


def test_force_replaces_an_adapter_folder_this_tool_wrote(work):
    out = work / "adapter"
    assert invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "--adapter-only", "-o", out, "--quiet").exit_code == 0
    first = sha256_file(out / "adapter_model.safetensors")
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "--adapter-only", "-o", out, "--force", "--seed", "3", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert sha256_file(out / "adapter_model.safetensors") != first
    assert not [p for p in work.iterdir() if p.name.startswith(".unlearn-")]


def test_force_never_replaces_a_file_that_is_not_a_checkpoint(work):
    before = tree(work)
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "notes.txt", "--force", "--quiet"),
             "not a safetensors checkpoint")
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "req.yaml", "--force", "--quiet"), "is the request")
    assert tree(work) == before


# ---------------------------------------------------------------- 2. a request cannot run a stranger's code

@pytest.mark.parametrize("arch, kwargs", [
    ("python:os:system", {"command": "touch {marker}"}),
    ("python:subprocess:call", {"args": ["touch", "{marker}"]}),
    ("python:builtins:exec", {"source": "open('{marker}', 'w')"}),
    ("python:shutil:rmtree", {"path": "{marker}"}),
])
@pytest.mark.parametrize("command", ["apply", "validate"])
def test_a_request_cannot_run_standard_library_callables(work, arch, kwargs, command):
    marker = work / "pwned"
    kwargs = json.loads(json.dumps(kwargs).replace("{marker}", str(marker)))
    req = write_request(work, {"classes": [3]}, arch=arch, kwargs=kwargs, name="evil.yaml")
    args = ["apply", work / "model.safetensors", "-r", req, "--quiet"] if command == "apply" else ["validate", "-r", req]
    rejected(invoke(*args), "a request may only load your own model code", "--trust-code")
    assert not marker.exists()


def test_own_module_beside_the_request_and_code_path_work_without_flags(digits_dir, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "nets_elsewhere.py").write_text(
        "from unlearn_tool.models import MLP\n"
        "def build(num_classes=10):\n    return MLP(num_classes=num_classes)\n")
    req = write_request(tmp_path, {"classes": [3]}, arch="python:nets_elsewhere:build")
    rejected(invoke("validate", "-r", req, digits_dir / "mlp.safetensors"), "--code-path")
    r = invoke("validate", "-r", req, digits_dir / "mlp.safetensors", "--code-path", code)
    assert r.exit_code == 0, r.stderr


def test_trusted_callable_must_still_return_a_module(digits_dir, tmp_path):
    req = write_request(tmp_path, {"classes": [3]}, arch="python:collections:OrderedDict", kwargs={})
    rejected(invoke("validate", "-r", req), "--trust-code")
    rejected(invoke("validate", "-r", req, "--trust-code"), "not a torch nn.Module")


# ---------------------------------------------------------------- 3. non-finite weights and parameters

def test_checkpoint_with_a_nan_is_refused_naming_the_tensor(work):
    state = load_file(str(work / "model.safetensors"))
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(work / "nan.safetensors"))
    rejected(invoke("apply", work / "nan.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--quiet"), "head.weight", "NaN")
    rejected(invoke("validate", "-r", work / "req.yaml", work / "nan.safetensors"), "head.weight")
    rejected(invoke("audit", "-r", work / "req.yaml", "--original", work / "model.safetensors", "--unlearned", work / "nan.safetensors",
                    "--report-dir", work / "rep", "--quiet"), "head.weight")
    assert not (work / "o.safetensors").exists() and not (work / "rep").exists()


@pytest.mark.parametrize("param", ["lr=.inf", "lr=.nan", "lr=1e30", "w_forget=1e300", "temperature=-.inf", "epochs=true"])
def test_non_finite_or_absurd_parameters_are_input_errors(work, param):
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--param", param, "--quiet"),
             "method.params." + param.split("=")[0])
    assert not (work / "o.safetensors").exists()


def test_diverged_output_is_never_written(work):
    from unlearn_tool.methods import MethodOutput, MethodParams, register_method, unregister_method

    def run(ctx, p):
        model = ctx.student()
        with torch.no_grad():
            next(model.parameters()).fill_(float("inf"))
        return MethodOutput(model=model)

    register_method("test-diverges", MethodParams, run, summary="test only")
    try:
        r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--method", "test-diverges", "--quiet")
        rejected(r, "unlearning diverged", "nothing was written", code=1)
    finally:
        unregister_method("test-diverges")
    assert not (work / "o.safetensors").exists()


# ---------------------------------------------------------------- 4. apply --audit checks everything first

@pytest.mark.parametrize("audit, fragment", [
    ({"gates": ["forget_acc <=="]}, "expected '<metric> <op> <number>'"),
    ({"gates": ["avg_gap <= 1"]}, "give --reference"),
    ({"gates": [], "reference": "missing.safetensors"}, "not found"),
    ({"gates": ["colour <= 1"]}, "unknown metric"),
])
def test_apply_audit_validates_gates_and_reference_before_writing(work, audit, fragment):
    edit_request(work / "req.yaml", audit=audit)
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--audit", "--quiet"), fragment)
    assert not (work / "o.safetensors").exists()


# ---------------------------------------------------------------- 5. no check-then-rename race

def test_publishing_never_clobbers_a_file_that_appeared_meanwhile(tmp_path, monkeypatch):
    from unlearn_tool import checkpoint
    from unlearn_tool.errors import OutputError

    out = tmp_path / "o.safetensors"
    monkeypatch.setattr(checkpoint, "check_output", lambda *a, **k: None)  # the other run passed its check too

    def write_then_race(tmp: Path) -> None:
        save_file({"w": torch.ones(2)}, str(tmp))
        save_file({"w": torch.zeros(2)}, str(out))  # the concurrent run publishes first

    with pytest.raises(OutputError, match="appeared while this run was writing"):
        checkpoint._write_atomically(out, write_then_race, force=False, fix="x", flag="--output")
    assert torch.equal(load_file(str(out))["w"], torch.zeros(2))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".unlearn-")]


def test_two_concurrent_applies_one_wins_and_reports_the_published_sha(work):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cli", "apply", str(work / "model.safetensors"), "-r", str(work / "req.yaml"),
           "-o", str(work / "o.safetensors"), "--json", "--quiet"]
    procs = [subprocess.Popen(cmd + ["--seed", str(s)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in (1, 2)]
    results = [(p.wait(timeout=240), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(out for code, out, _ in results if code == 0)
    assert json.loads(winner)["output_sha256"] == sha256_file(work / "o.safetensors")
    loser = next(e for code, _, e in results if code == 2)
    assert "exists" in loser or "appeared" in loser


# ---------------------------------------------------------------- 6. SIGTERM cleans up

def test_sigterm_during_the_write_leaves_no_temporary_file(work, monkeypatch):
    import safetensors.torch as st

    real = st.save_file

    def save_then_sigterm(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the output is still a temporary file
        time.sleep(0.5)

    monkeypatch.setattr(st, "save_file", save_then_sigterm)
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--quiet")
    rejected(r, "terminated by signal 15", "no output was written", code=143)
    assert not (work / "o.safetensors").exists()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


LATE_SIGTERM = {
    # once the command returned, before the process ends: the line says the output was written, exit 143
    "after the command": ("import cli.main as m, os, signal, sys, time\nreal = m.app\n"
                          "def app():\n    try:\n        real()\n    finally:\n"
                          "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(1)\nm.app = app\n"),
    # in the interpreter's teardown, where Python had put the default handler back: 143 and no word, though the command
    # had succeeded. The process now ends before any teardown, with the command's own exit code
    "in the teardown": ("import os, signal, sys, time\nclass Late:\n    def __del__(self, k=os.kill, p=os.getpid(), s=time.sleep):\n"
                        "        k(p, signal.SIGTERM); s(1)\n_late = Late()\nimport cli.main as m\n"),
}


@pytest.mark.parametrize("when", list(LATE_SIGTERM))
def test_sigterm_after_the_command_finished_is_never_silent(work, when):
    """A SIGTERM after apply finished ended the process with 143 and no word, so a pipeline could not tell a complete
    output from a cut one."""
    out = work / "o.safetensors"
    argv = ["unlearn", "apply", str(work / "model.safetensors"), "-r", str(work / "req.yaml"), "-o", str(out), "--quiet"]
    code = f"{LATE_SIGTERM[when]}sys.argv = {argv!r}\nm.run()\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if when == "after the command":
        assert r.returncode == 143, (r.returncode, r.stderr)
        assert r.stderr.strip().splitlines()[-1] == f"error: terminated by signal 15; {out} was written before that", r.stderr
    else:
        assert r.returncode == 0 and "Terminated" not in r.stderr, (r.returncode, r.stderr)
    assert invoke("inspect", out).exit_code == 0


def test_sigterm_while_the_output_folder_is_probed_leaves_no_probe_file(work, monkeypatch):
    """The writability probe is a temporary file created and removed at once; a SIGTERM between the two left a 0-byte
    `.unlearn-*.probe` beside the output."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp_then_sigterm(*args, **kwargs):
        made = real(*args, **kwargs)
        if kwargs.get("suffix") == ".probe":
            os.kill(os.getpid(), signal.SIGTERM)
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_sigterm)
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--quiet")
    rejected(r, "terminated by signal 15", "no output was written", code=143)
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


def test_a_signal_during_an_extension_import_is_still_that_signal(work, monkeypatch):
    """A SIGHUP sent to `unlearn train` a few seconds in exited 1 with "unexpected ImportError: initialization failed
    (please report this)": it arrived while a pybind11 extension was being imported, whose module init turns any
    exception into ImportError('initialization failed') raised from it. The cause is the signal: exit 129, cleaned up."""
    import safetensors.torch as st

    def save_while_an_extension_initialises(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.5)
        except BaseException as e:  # what pybind11's PYBIND11_MODULE does with an exception raised during init
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(st, "save_file", save_while_an_extension_initialises)
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--quiet")
    rejected(r, "terminated by signal 1", "no output was written", code=129)
    assert not (work / "o.safetensors").exists()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


def test_a_signal_during_a_python_models_import_is_not_a_model_error(work):
    """The same pybind11 wrapping inside a `python:` model module (one that imports an extension of its own) reached
    the user as exit 2 "model.arch: cannot import module ... (initialization failed)": usercode turns an ImportError
    into a ModelError, which was reported before the signal behind it was looked for. It is the signal: exit 129."""
    (work / "extmodel.py").write_text(
        "import os, signal, time\n"
        "try:  # what PYBIND11_MODULE does with an exception raised while the extension initialises\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    time.sleep(0.5)\n"
        "except BaseException as e:\n"
        "    raise ImportError('initialization failed') from e\n")
    req = write_request(work, {"classes": [3]}, arch="python:extmodel:Model", name="ext.yaml")
    rejected(invoke("validate", "-r", req), "terminated by signal 1", "no output was written", code=129)
    (work / "extmodel.py").write_text("raise ImportError('libfoo.so: cannot open shared object file')\n")  # a real error stays one
    rejected(invoke("validate", "-r", req), "cannot import module 'extmodel'", "libfoo.so")


def test_sigterm_to_a_real_process_exits_143_and_cleans_up(work):
    edit_request(work / "req.yaml", method={"name": "rfa", "params": {"epochs": 100000, "stop": "epochs"}})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cli", "apply", str(work / "model.safetensors"), "-r", str(work / "req.yaml"),
                          "-o", str(work / "o.safetensors"), "--quiet"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(12)  # start-up, data, model: it is unlearning by now
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 143
    assert "terminated" in p.stderr.read()
    assert not (work / "o.safetensors").exists()
    assert not [q.name for q in work.iterdir() if q.name.startswith(".")]


# ---------------------------------------------------------------- 7. foreign text is never markup or terminal control

def test_markup_in_a_request_id_is_printed_not_parsed(work):
    edit_request(work / "req.yaml", id="[/oops] [bold]x")
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert "[/oops]" in r.stderr
    r = invoke("audit", "-r", work / "req.yaml", "--original", work / "model.safetensors", "--unlearned", work / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert "[/oops]" in r.stderr


def test_inspect_escapes_markup_and_terminal_escapes(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"[/x]": torch.ones(2)}, str(path), metadata={"note": "[/y] \x1b[31mred\x1b[0m \x1b]0;title\x07"})
    r = invoke("inspect", path)
    assert r.exit_code == 0, r.stderr
    assert "[/x]" in r.stdout and "[/y]" in r.stdout
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b" in r.stdout


# ---------------------------------------------------------------- 8 and 9. invalid input is never "unexpected"

def _module_request(folder: Path, source: str) -> Path:
    (folder / "badnet.py").write_text(source)
    return write_request(folder, {"classes": [3]}, arch="python:badnet:build", kwargs={}, name="badnet.yaml")


@pytest.mark.parametrize("source, fragment", [
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("def build(:\n", "SyntaxError"),
    ("def build():\n    raise ValueError('no weights')\n", "ValueError: no weights"),
    ("import sys\nsys.exit(0)\n", "SystemExit"),
    ("import sys\ndef build():\n    sys.exit(3)\n", "SystemExit"),
    ("def build():\n    return 42\n", "not a torch nn.Module"),
])
def test_broken_user_module_is_an_input_error(work, source, fragment):
    req = _module_request(work, source)
    rejected(invoke("apply", work / "model.safetensors", "-r", req, "-o", work / "o.safetensors", "--quiet"), "model.arch", fragment)
    rejected(invoke("validate", "-r", req), fragment)
    assert not (work / "o.safetensors").exists()


def test_indices_file_that_is_not_utf8(work):
    (work / "idx.txt").write_bytes(b"\xff\xfe1\x002\x00")
    req = write_request(work, {"indices_file": "idx.txt"}, name="idx.yaml")
    rejected(invoke("apply", work / "model.safetensors", "-r", req, "-o", work / "o.safetensors", "--quiet"), "not UTF-8")


@pytest.mark.parametrize("param, fragment", [
    ('lr=!!python/object/apply:os.system ["touch pwned"]', "--param lr"),
    ("target_layers=[unclosed", "--param target_layers"),
    ("target_layers=fc(", "not a valid regular expression"),
    ("target_layers=last:0", "at least 1"),
])
def test_bad_param_values(work, param, fragment):
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--param", param, "--quiet"), fragment)
    assert not (work / "pwned").exists()


def test_deeply_nested_yaml(work):
    (work / "deep.yaml").write_text("version: 1\nid: x\nmodel: " + "[" * 5000 + "]" * 5000 + "\n")
    rejected(invoke("validate", "-r", work / "deep.yaml"), "nested too deeply")


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "18446744073709551616"], "--seed"),
    (["--seed", "-1"], "--seed"),
])
def test_seed_out_of_range_on_the_command_line(work, args, fragment):
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", *args, "--quiet"), fragment)


def test_seed_out_of_range_in_the_request(work):
    edit_request(work / "req.yaml", seed=2**70)
    rejected(invoke("validate", "-r", work / "req.yaml"), "seed")


def test_output_name_too_long_fails_before_unlearning(work):
    start = time.perf_counter()
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / ("x" * 300 + ".safetensors"), "--quiet"),
             "longer than the file system allows")
    assert time.perf_counter() - start < 5  # rejected up front, not after the method ran


@pytest.mark.parametrize("resize, fragment", [(100000, "preprocess.resize"), (4000, "GiB")])
def test_absurd_resize(work, resize, fragment):
    edit_request(work / "req.yaml", data__train__preprocess={"resize": resize})
    rejected(invoke("validate", "-r", work / "req.yaml"), fragment)


# ---------------------------------------------------------------- 10 and 11. smaller cases

def test_duplicate_keys_are_an_error(work):
    text = (work / "req.yaml").read_text() + "forget:\n  classes: [5]\n"
    (work / "dup.yaml").write_text(text)
    rejected(invoke("validate", "-r", work / "dup.yaml"), "duplicate key 'forget'")


@pytest.mark.parametrize("change, fragment", [
    ({"version": True}, "version"),
    ({"forget": {"classes": [True]}}, "forget.classes.0"),
    ({"forget": {"indices": [1, True]}}, "forget.indices.1"),
])
def test_booleans_are_not_numbers(work, change, fragment):
    edit_request(work / "req.yaml", **change)
    rejected(invoke("validate", "-r", work / "req.yaml"), fragment)


def test_output_must_be_a_regular_file(work):
    os.mkfifo(work / "fifo")
    (work / "to-null").symlink_to("/dev/null")
    for target in ("fifo", "to-null"):
        rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / target, "--force", "--quiet"),
                 "not a safetensors checkpoint")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_inputs_that_are_fifos_do_not_hang(work):
    os.mkfifo(work / "fifo.safetensors")
    os.mkfifo(work / "fifo.yaml")
    code = ("from typer.testing import CliRunner\nfrom cli.main import app\nimport sys\n"
            f"r = CliRunner().invoke(app, ['inspect', {str(work / 'fifo.safetensors')!r}])\n"
            f"s = CliRunner().invoke(app, ['validate', '-r', {str(work / 'fifo.yaml')!r}])\n"
            "print(r.exit_code, s.exit_code, r.stderr.strip(), s.stderr.strip())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("2 2 "), out
    assert "not a regular file" in out.stdout


# ---------------------------------------------------------------- a drop-in replacement: dtype, mode, bytes

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_keep_their_dtype(work, dtype):
    state = {k: v.to(dtype) for k, v in load_file(str(work / "model.safetensors")).items()}
    save_file(state, str(work / "half.safetensors"))
    r = invoke("apply", work / "half.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    out = load_file(str(work / "o.safetensors"))
    assert {k: v.dtype for k, v in out.items()} == {k: dtype for k in state}
    summary = json.loads(r.stdout)
    assert summary["after"]["forget_acc"] < summary["before"]["forget_acc"] - 0.5


def test_output_mode_follows_the_umask_and_force_keeps_the_mode(work):
    old = os.umask(0o022)
    try:
        assert invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--quiet").exit_code == 0
        assert stat.S_IMODE(os.stat(work / "o.safetensors").st_mode) == 0o644
        os.chmod(work / "o.safetensors", 0o640)
        assert invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--force", "--quiet").exit_code == 0
        assert stat.S_IMODE(os.stat(work / "o.safetensors").st_mode) == 0o640
        assert invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "--adapter-only", "-o", work / "ad", "--quiet").exit_code == 0
        assert stat.S_IMODE(os.stat(work / "ad").st_mode) == 0o755
    finally:
        os.umask(old)


def test_source_date_epoch_gives_byte_identical_outputs(work, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for name in ("a", "b"):
        assert invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / f"{name}.safetensors", "--quiet").exit_code == 0
    assert sha256_file(work / "a.safetensors") == sha256_file(work / "b.safetensors")
    from unlearn_tool.checkpoint import read_checkpoint

    assert read_checkpoint(work / "a.safetensors")[1]["unlearn.created_utc"] == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "c.safetensors", "--quiet"), "SOURCE_DATE_EPOCH")
    assert not (work / "c.safetensors").exists()


def test_an_output_inside_an_input_folder_is_refused_also_through_a_link(tmp_path):
    """A save_pretrained folder or an exact artifact is an input folder: an output inside it, named directly or through a
    link to it, would modify the input (the exact path had its own check; checkpoint apply had none)."""
    from unlearn_tool.checkpoint import check_output
    from unlearn_tool.errors import OutputError

    folder = tmp_path / "hf_model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    (tmp_path / "link").symlink_to(folder)
    for out in (folder / "u.safetensors", tmp_path / "link" / "u.safetensors"):
        with pytest.raises(OutputError, match="is inside the input checkpoint"):
            check_output(out, "file", False, protect={"input checkpoint": folder})
    check_output(tmp_path / "u.safetensors", "file", False, protect={"input checkpoint": folder})  # beside it is fine


# ---------------------------------------------------------------- the second attack report (stop 28)

def test_an_empty_data_split_is_refused_in_one_line(work):
    """A tensors file of zero samples crashed validate and train: "unexpected IndexError ... (please report this)"."""
    save_file({"x": torch.zeros(0, 1, 8, 8), "y": torch.zeros(0, dtype=torch.int64)}, str(work / "empty.safetensors"))
    req = edit_request(work / "req.yaml", data__train={"source": "tensors", "path": "empty.safetensors"})
    rejected(invoke("validate", "-r", req), "data.train", "holds no samples")
    rejected(invoke("train", "-r", req, "-o", work / "t.safetensors", "--epochs", "1", "--quiet"), "holds no samples")
    assert not (work / "t.safetensors").exists()


def test_a_ledger_in_a_folder_that_cannot_be_written_is_refused_before_any_work(work, monkeypatch):
    """--ledger /proc/l.jsonl passed every check, the run did its work, and publishing then failed with "unexpected
    FileNotFoundError: '/proc/l.d' (please report this)"."""
    import unlearn_tool.pipeline as pipeline

    def no_work(*_a, **_k):
        raise AssertionError("the run started its work")

    monkeypatch.setattr(pipeline, "unlearn_step", no_work)
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--ledger", "/proc/l.jsonl", "--quiet")
    rejected(r, "ledger /proc/l.jsonl", "is not writable", "choose another --ledger")
    assert not (work / "o.safetensors").exists()


def test_paths_that_are_not_utf8_are_refused_naming_the_name(work):
    """safetensors opens and writes by UTF-8 name only: an output named in other bytes failed after the work ("unexpected
    UnicodeEncodeError"), an input so named was called "not a valid safetensors file" with a fix to convert it."""
    odd = os.fsdecode(b"\xff\xfe.safetensors")
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / odd, "--quiet")
    rejected(r, "its path is not valid UTF-8", "choose a UTF-8 name for --output")
    shutil.copy(work / "model.safetensors", work / odd)
    line = rejected(invoke("apply", work / odd, "-r", work / "req.yaml", "-o", work / "o.safetensors", "--quiet"),
                    "its path is not valid UTF-8", "rename it")
    assert "convert it" not in line and not (work / "o.safetensors").exists()


def test_an_integer_copy_of_a_float_checkpoint_is_refused(work):
    """Cast on loading, int32 weights became zeros: validate said the checkpoint matched and apply 'unlearned' a model that
    predicted one class, writing an int32 output."""
    state = load_file(str(work / "model.safetensors"))
    save_file({k: v.to(torch.int32) for k, v in state.items()}, str(work / "int.safetensors"))
    for r in (invoke("validate", "-r", work / "req.yaml", work / "int.safetensors"),
              invoke("apply", work / "int.safetensors", "-r", work / "req.yaml", "-o", work / "o.safetensors", "--quiet")):
        rejected(r, "hold int32 values where builtin:mlp has floating-point weights", "not an integer copy")
    assert not (work / "o.safetensors").exists()


def test_a_complex_copy_of_a_float_checkpoint_is_called_complex(work):
    """complex64 weights were refused as 'not an integer copy'."""
    state = load_file(str(work / "model.safetensors"))
    save_file({k: v.to(torch.complex64) for k, v in state.items()}, str(work / "complex.safetensors"))
    line = rejected(invoke("validate", "-r", work / "req.yaml", work / "complex.safetensors"),
                    "hold complex64 values where builtin:mlp has floating-point weights", "not a complex copy")
    assert "integer" not in line


def test_a_newline_in_a_path_is_escaped_not_the_end_of_the_error(work):
    """The error line was cut at the newline: "error: checkpoint mi", the problem and the fix lost."""
    line = rejected(invoke("apply", work / "mi\nssing.safetensors", "-r", work / "req.yaml", "--quiet"), "mi\\x0assing.safetensors not found",
                    "give the path of a .safetensors file")
    assert "\n" not in line


def test_a_python_model_that_prints_leaves_json_stdout_parseable(tmp_path):
    """A module that printed at import (or in forward) put its text before validate/apply --json's object: jq failed."""
    (tmp_path / "chatty.py").write_text(
        "import torch.nn as nn\n"
        "print('loading chatty nets')\n"
        "class Net(nn.Sequential):\n"
        "    def forward(self, x):\n"
        "        print('forward', tuple(x.shape))\n"
        "        return super().forward(x)\n"
        "def net(num_classes=10):\n"
        "    return Net(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))\n")
    req = write_request(tmp_path, {"indices": [0, 1, 2]}, arch="python:chatty:net",
                        method={"name": "finetune", "params": {"epochs": 1}})
    assert invoke("train", "-r", req, "-o", tmp_path / "m.safetensors", "--epochs", "1", "--device", "cpu", "--quiet").exit_code == 0
    for args in (("validate", "-r", req, "--json"),
                 ("apply", tmp_path / "m.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--device", "cpu", "--json")):
        result = invoke(*args)
        assert result.exit_code == 0, result.stderr
        assert isinstance(json.loads(result.stdout), dict)
        assert "loading chatty nets" in result.stderr or "forward" in result.stderr


def test_a_reader_that_leaves_or_a_full_stdout_gets_one_line_not_a_traceback():
    """`unlearn methods | head -1` exited 1 "unexpected BrokenPipeError ... (please report this)"; `unlearn --version >
    /dev/full` and `validate > /dev/full` printed a traceback. Now: quiet 141 for a reader that left (as SIGPIPE
    reports), one line and exit 1 for a full disk."""
    entry = [sys.executable, "-m", "cli"]
    gone = subprocess.Popen([*entry, "methods"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gone.stdout.close()  # before it writes anything: it takes a second to start
    _, stderr = gone.communicate(timeout=120)
    assert gone.returncode == 141 and stderr.decode().strip() == "", stderr
    for args in (["--version"], ["methods"], ["validate", "-r", str(ROOT / "unlearn_tool" / "examples" / "digits_class.yaml")]):
        with open("/dev/full", "w") as full:
            r = subprocess.run([*entry, *args], cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "No space left on device" in lines[0], (args, r.stderr)


def test_stdout_at_its_file_size_limit_or_closed_is_an_error_not_a_cut_answer():
    """`unlearn methods --json > out` under `ulimit -f 1` wrote the first KiB of the JSON and exited 0 (Python's
    buffered stdout lost the failed tail), so a pipeline read a cut answer as a whole one; without --json it said
    "unexpected OSError ... (please report this)". `unlearn methods >&-` printed a traceback. Now each is one line naming
    the cause and the fix, exit 1; a closed stderr does not change the answer on stdout."""
    import resource

    entry = [sys.executable, "-m", "cli"]

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    import tempfile

    for args in (["methods", "--json"], ["methods"]):
        with tempfile.TemporaryFile() as out:
            r = subprocess.run([*entry, *args], cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True, timeout=120,
                               preexec_fn=capped)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "File too large" in lines[0] and "ulimit -f" in lines[0], (args, r.stderr)
    closed = subprocess.run(" ".join([*entry, "methods"]) + " >&-", shell=True, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            timeout=120)
    lines = closed.stderr.strip().splitlines()
    assert closed.returncode == 1 and len(lines) == 1 and "standard output is closed" in lines[0], closed.stderr
    no_stderr = subprocess.run(" ".join([*entry, "methods", "--json"]) + " 2>&-", shell=True, cwd=ROOT, stdout=subprocess.PIPE,
                               text=True, timeout=120)
    assert no_stderr.returncode == 0 and len(json.loads(no_stderr.stdout)) > 10


def _unwritable_folder() -> Path:
    """/sys/kernel: nothing, not even root, can create a file there (sysfs); skip where it can."""
    folder = Path("/sys/kernel")
    try:
        probe = folder / "unlearn-test-probe"
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return folder
    pytest.skip("/sys/kernel is writable here")


def test_an_uncreatable_report_dir_is_refused_before_any_work(digits_dir, tmp_path):
    """`apply --audit --report-dir DIR` where DIR cannot be created ran the whole unlearning, published the output (with
    --no-keep-on-fail too) and its ledger, then failed with exit 2; `audit` too ran first. Now both are refused before
    any work, naming the folder, and nothing is written."""
    bad = _unwritable_folder() / "rep"
    out = tmp_path / "u.safetensors"
    for extra in ((), ("--no-keep-on-fail",)):
        r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--device", "cpu",
                   "--audit", "--report-dir", bad, *extra)
        assert r.exit_code == 2 and "not writable" in r.stderr and str(bad) in r.stderr, r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    r = invoke("audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
               "--unlearned", digits_dir / "mlp.safetensors", "--report-dir", bad, "--device", "cpu")
    assert r.exit_code == 2 and "not writable" in r.stderr, r.stderr


def test_quiet_and_json_audits_still_print_warnings(digits_dir, tmp_path):
    """`audit -q` and `audit --json` printed nothing on stderr, the adapter-only warning (the forgotten data is still in
    the base weights) included, though the README says warnings always go to stderr. -q drops the table only."""
    adapter = tmp_path / "adapter"
    assert invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", adapter, "--adapter-only",
                  "--device", "cpu", "-q").exit_code == 0
    for flag in ("-q", "--json"):
        r = invoke("audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors", "--unlearned", adapter,
                   "--report-dir", tmp_path / f"rep{flag}", "--device", "cpu", flag)
        assert "warning: adapter-only output: the forgotten data is still in the base weights" in r.stderr, (flag, r.stderr)
        assert "┏" not in r.stderr  # no table


def test_a_relative_path_in_method_params_is_relative_to_the_request_not_the_working_folder(tmp_path, monkeypatch):
    """README: paths in a request are relative to its folder. `method.params.concept_dir: concepts` was read from the
    working folder instead, so the same request found its concepts from one folder and not from another. A --param
    path stays relative to the working folder, as every path on the command line is."""
    folder = tmp_path / "req"
    for concept in ("a", "b"):  # each concept: a folder of examples (a tensors file of 8x8 digits-shaped inputs)
        (folder / "concepts" / concept).mkdir(parents=True)
        from safetensors.torch import save_file
        import torch

        save_file({"x": torch.rand(3, 64)}, str(folder / "concepts" / concept / "x.safetensors"))
    req = write_request(folder, {"classes": [3]}, method={"name": "concept-poison", "params": {"concept_dir": "concepts"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke("validate", "-r", req)
    assert r.exit_code == 0, r.stderr
    r = invoke("validate", "-r", req, "--json")  # validate takes no --param: the request's value is what it checks
    assert r.exit_code == 0, r.stderr
    from unlearn_tool.request import load_request, method_params_for

    request = load_request(req)
    assert method_params_for(request, "concept-poison")["concept_dir"] == str(folder / "concepts")
    assert method_params_for(request, "concept-poison", {"concept_dir": "bank"})["concept_dir"] == "bank"  # --param: as given


def test_force_never_overwrites_a_file_the_request_reads(tmp_path):
    """`apply ... -o train.safetensors --force` replaced the request's training data (a safetensors file too) with the
    unlearned weights, exit 0; `train -o test.safetensors --force` the test data. Only the checkpoint and the request
    were protected. Now every file the request reads is, and a data folder may still hold outputs."""
    import torch
    from safetensors.torch import save_file

    from unlearn_tool.checkpoint import Protected, check_output, protected_inputs
    from unlearn_tool.errors import OutputError
    from unlearn_tool.request import load_request

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.rand(60, 8, generator=g) + y[:, None]
    save_file({"x": x, "y": y}, str(tmp_path / "train.safetensors"))
    save_file({"x": x[:30], "y": y[:30]}, str(tmp_path / "test.safetensors"))
    (tmp_path / "forget.txt").write_text("0\n1\n")
    req = write_request(tmp_path, {"indices_file": "forget.txt"}, kwargs={"in_features": 8, "num_classes": 3},
                        method={"name": "finetune", "params": {"epochs": 1}},
                        extra={"data": {"train": {"source": "tensors", "path": "train.safetensors"},
                                        "test": {"source": "tensors", "path": "test.safetensors"}}})
    model = tmp_path / "m.safetensors"
    assert invoke("train", "-r", req, "-o", model, "--epochs", "1", "--device", "cpu", "-q").exit_code == 0
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for args in (("apply", model, "-r", req, "-o", tmp_path / "train.safetensors"),
                 ("train", "-r", req, "-o", tmp_path / "test.safetensors", "--epochs", "1"),
                 ("apply", model, "-r", req, "-o", tmp_path / "forget.txt")):
        r = invoke(*args, "--force", "--device", "cpu", "-q")
        assert r.exit_code == 2 and "inputs are never overwritten" in r.stderr, (args, r.stderr)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == kept
    inputs = protected_inputs(load_request(req))
    assert inputs["request's data.train.path"] == Protected(tmp_path / "train.safetensors")
    assert inputs["request's forget.indices_file"] == Protected(tmp_path / "forget.txt")
    data_root = tmp_path / "root"
    data_root.mkdir()
    check_output(data_root / "u.safetensors", "file", False, {"data root": Protected(data_root)})  # inside: allowed
    with pytest.raises(OutputError, match="is the data root"):
        check_output(data_root, "dir", True, {"data root": Protected(data_root)})
    with pytest.raises(OutputError, match="folder that holds the data root"):
        check_output(tmp_path, "dir", True, {"data root": Protected(data_root)})


def test_a_float8_checkpoint_is_read_and_its_nan_named(digits_dir, tmp_path):
    """A float8_e4m3fn checkpoint stopped validate and apply with "unexpected NotImplementedError: isfinite not
    implemented" (float8_e5m2 passed). Now it is checked as float32: read, kept float8 in the output, and a NaN in it
    named like any other."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(digits_dir / "mlp.safetensors"))
    fp8 = tmp_path / "fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in state.items()}, str(fp8))
    assert invoke("validate", "-r", digits_dir / "class.yaml", fp8).exit_code == 0
    out = tmp_path / "u.safetensors"
    r = invoke("apply", fp8, "-r", digits_dir / "class.yaml", "-o", out, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.stderr
    assert {v.dtype for v in load_file(str(out)).values()} == {torch.float8_e4m3fn}
    first = sorted(state)[0]
    broken = {k: v.to(torch.float8_e4m3fn) for k, v in state.items()}
    broken[first] = broken[first].float().fill_(float("nan")).to(torch.float8_e4m3fn)
    save_file(broken, str(tmp_path / "nan.safetensors"))
    r = invoke("validate", "-r", digits_dir / "class.yaml", tmp_path / "nan.safetensors")
    assert r.exit_code == 2 and first in r.stderr and "NaN" in r.stderr, r.stderr


def test_class_unlearning_that_leaves_the_class_known_says_so(digits_dir, tmp_path):
    """laf on a timm ResNet raised forget accuracy from 65% to 97% and exited 0 with no warning; finetune or l1-sparse
    with weak settings left half the class, silently. Now apply warns when forget accuracy stays at half the original's
    or more (a retrained model scores 0%); a run that forgets says nothing of the kind."""
    weak = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "weak.safetensors",
                  "--method", "finetune", "--param", "epochs=1", "--param", "lr=0.00001", "--device", "cpu", "-q")
    assert weak.exit_code == 0 and "warning: the class is largely not forgotten: forget_acc stayed at" in weak.stderr, weak.stderr
    good = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "rfa.safetensors",
                  "--device", "cpu", "-q")
    assert good.exit_code == 0 and "largely not forgotten" not in good.stderr, good.stderr


def test_quickstart_forgets_digit_3_and_its_output_verifies_against_its_ledger(tmp_path):
    """The README's first command. It wrote no ledger beside its output, so `unlearn ledger verify` on the demo said
    NOT VERIFIED (exit 3). Now it applies as `unlearn apply --force` does; a second run reuses the trained model."""
    folder = tmp_path / "qs"
    first = invoke("quickstart", "--dir", folder, "--device", "cpu", "--json")
    assert first.exit_code == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["trained_original"] and summary["before"]["forget_acc"] > 0.95 and summary["after"]["forget_acc"] < 0.05
    assert summary["after"]["test_remaining_acc"] > summary["before"]["test_remaining_acc"] - 0.03
    again = invoke("quickstart", "--dir", folder, "--device", "cpu", "--json")
    assert again.exit_code == 0 and not json.loads(again.stdout)["trained_original"], again.stderr
    r = invoke("ledger", "verify", folder / "digits_mlp.unlearned.safetensors", "--original", folder / "digits_mlp.safetensors")
    assert r.exit_code == 0 and "verified: 1 step(s)" in r.stdout + r.stderr, r.stdout + r.stderr


def test_an_ascii_stdout_still_shows_a_non_ascii_request_id(tmp_path):
    """With PYTHONIOENCODING=ascii (or LC_ALL=C without UTF-8 mode) `validate` of a request whose id is not ASCII ended
    in a traceback once stdout was written unbuffered: click had re-encoded an ASCII stream as UTF-8, as it does again."""
    import os

    req = write_request(tmp_path, {"classes": [3]}, extra={"id": "löschung-3"})
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "cli", "validate", "-r", str(req)], cwd=ROOT, capture_output=True, env=env, timeout=120)
    assert r.returncode == 0 and "löschung-3".encode() in r.stdout, (r.stdout, r.stderr)


def test_outputs_may_not_go_inside_an_imagefolder_and_refusals_name_paths(tmp_path):
    """An output inside an imagefolder's root (its .ledger.d, or an adapter folder) became a new class folder, and the next
    run on the request failed; a refusal printed Protected(path=PosixPath(...)) instead of the path."""
    from unlearn_tool.checkpoint import Protected, check_output, protected_inputs
    from unlearn_tool.errors import OutputError
    from unlearn_tool.request import load_request

    (tmp_path / "images").mkdir()
    req = write_request(tmp_path, {"classes": [1]}, extra={"data": {"train": {"source": "imagefolder", "path": "images"},
                                                                     "test": {"source": "imagefolder", "path": "images"}}})
    inputs = protected_inputs(load_request(req))
    with pytest.raises(OutputError, match="is inside the request's data.train.path"):
        check_output(tmp_path / "images" / "u.safetensors", "file", False, inputs)
    check_output(tmp_path / "u.safetensors", "file", False, inputs)  # beside it: fine
    with pytest.raises(OutputError) as e:
        check_output(tmp_path / "root", "dir", True, {"data root": Protected(tmp_path / "root" / "x")})
    assert "Protected(" not in str(e.value) and str(tmp_path / "root" / "x") in str(e.value)


def test_ssd_reads_a_forget_set_of_one_batch_once():
    """A forget set that fits in one batch was read 48 times (forget_batches) for the same importance: the reshuffle
    changes nothing when every sample is in the one batch."""
    import torch
    from torch import nn

    from unlearn_tool.data import LabelledData
    from unlearn_tool.methods.ssd import importances

    calls = []
    model = nn.Linear(4, 3)
    model.register_forward_hook(lambda *_: calls.append(1))
    data = LabelledData.from_tensors(torch.rand(20, 4), torch.arange(20) % 3)
    importances(model, data, 64, torch.device("cpu"), torch.Generator().manual_seed(0), min_batches=48)
    assert len(calls) == 1
    importances(model, data, 8, torch.device("cpu"), torch.Generator().manual_seed(0), min_batches=48)
    assert len(calls) == 1 + 48  # 3 batches of 7/7/6 per pass, 16 passes


def test_merge_force_does_not_replace_a_data_file(digits_dir, tmp_path):
    """`unlearn merge ADAPTER --base B -o train.safetensors --force` replaced a tensors data file (keys x, y) with the
    merged weights: merge has no request to tell its data files. A safetensors file of keys x and y (and ids) is data."""
    import torch
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    assert invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", adapter, "--adapter-only",
                  "--device", "cpu", "-q").exit_code == 0
    data = tmp_path / "train.safetensors"
    save_file({"x": torch.rand(4, 64), "y": torch.arange(4)}, str(data))
    kept = data.read_bytes()
    r = invoke("merge", adapter, "--base", digits_dir / "mlp.safetensors", "-o", data, "--force")
    assert r.exit_code == 2 and "is a data file" in r.stderr, r.stderr
    assert data.read_bytes() == kept
    save_file({"x": torch.rand(4, 64), "y": torch.arange(4), "mean": torch.zeros(64)}, str(data))  # data with one more key
    r = invoke("merge", adapter, "--base", digits_dir / "mlp.safetensors", "-o", data, "--force")
    assert r.exit_code == 2 and "is a data file" in r.stderr, r.stderr
    r = invoke("merge", adapter, "--base", digits_dir / "mlp.safetensors", "-o", tmp_path / "m.safetensors")
    assert r.exit_code == 0 and invoke("merge", adapter, "--base", digits_dir / "mlp.safetensors", "-o", tmp_path / "m.safetensors",
                                       "--force").exit_code == 0  # a checkpoint is still replaced
    from unlearn_tool.checkpoint import looks_like_data_file, metadata_for

    ours = tmp_path / "xy.safetensors"  # a model whose parameters are named x and y, written by this tool: not data
    save_file({"x": torch.rand(2), "y": torch.rand(2)}, str(ours), metadata=metadata_for({"method": "rfa"}))
    assert not looks_like_data_file(ours)


def test_a_utf16_stdout_gets_one_byte_order_mark():
    """Each write was encoded on its own, so PYTHONIOENCODING=utf-16 put a byte-order mark before every piece of output,
    one in the middle of the JSON."""
    import os

    env = {**os.environ, "PYTHONIOENCODING": "utf-16", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "cli", "methods"], cwd=ROOT, capture_output=True, env=env, timeout=120)
    text = r.stdout.decode("utf-16")  # one line per write
    assert r.returncode == 0 and len(text.splitlines()) > 10 and "\ufeff" not in text, r.stderr


def test_quickstart_errors_name_its_own_choice_not_apply_options():
    """quickstart has no --ledger or --output: an unrelated ledger file in its folder ended "choose another --ledger", two
    runs in one folder "pass --force to overwrite it or choose another --output"."""
    from unlearn_tool.quickstart import quickstart_fix

    assert quickstart_fix("error: ledger q/x.ledger.jsonl exists and is not a ledger (line 1 is not JSON); choose another "
                          "--ledger").endswith("remove it or choose another --dir")
    fixed = quickstart_fix("output q/digits_mlp.safetensors exists; pass --force to overwrite it or choose another --output")
    assert fixed == "output q/digits_mlp.safetensors exists; remove it or choose another --dir"


def test_a_report_dir_or_ledger_inside_an_imagefolder_is_refused(digits_dir, tmp_path):
    """`--report-dir` or `--ledger` inside the request's imagefolder was accepted: the folder it made became a new class,
    and the next run on the request failed."""
    (tmp_path / "images" / "a").mkdir(parents=True)
    req = write_request(tmp_path, {"classes": [1]}, extra={"data": {"train": {"source": "imagefolder", "path": "images"},
                                                                     "test": {"source": "imagefolder", "path": "images"}}})
    inside = tmp_path / "images"
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--audit",
               "--report-dir", inside / "rep", "--device", "cpu", "-q")
    assert r.exit_code == 2 and "report dir" in r.stderr and "is inside the request's data.train.path" in r.stderr, r.stderr
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--ledger",
               inside / "u.ledger.jsonl", "--device", "cpu", "-q")
    assert r.exit_code == 2 and "ledger" in r.stderr and "is inside the request's data.train.path" in r.stderr, r.stderr
    r = invoke("audit", "-r", req, "--original", digits_dir / "mlp.safetensors", "--unlearned", digits_dir / "mlp.safetensors",
               "--report-dir", inside / "rep", "--device", "cpu")
    assert r.exit_code == 2 and "is inside the request's data.train.path" in r.stderr, r.stderr
    assert sorted(p.name for p in inside.iterdir()) == ["a"]
