"""Bad input to the ``fastfields`` jobs (issue 20): every probe of the fuzz sweep, in-process
through ``fastfields.cli.main``, must exit 2 with one line on stderr that names the flag (or
input) and what was expected, and no traceback; Ctrl-C (a real SIGINT, so a subprocess) exits
130 with one line; interrupted writers leave no partial file.
"""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastfields.cli import main

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "images" / "triposr_chair.png"
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad inputs of every kind, and a valid tiny LRM checkpoint to corrupt."""
    from safetensors.torch import load_file, save_file

    from fastfields.models.lrm import LRM, save_pretrained

    d = tmp_path_factory.mktemp("bad")
    (d / "empty.png").write_bytes(b"")
    (d / "garbage.png").write_bytes(np.random.default_rng(0).bytes(300))
    data = IMAGE.read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "a_file").write_text("not a folder")
    (d / "garbage.pth").write_bytes(np.random.default_rng(1).bytes(500))
    (d / "garbage.npz").write_bytes(np.random.default_rng(2).bytes(3000))
    torch.manual_seed(0)
    checkpoint = save_pretrained(LRM.from_preset("tiny"), d / "ck")
    weights = load_file(checkpoint / "model.safetensors")
    for name in ("garbage_st", "truncated_st", "not_json", "not_object", "int32", "nan"):
        target = d / name
        target.mkdir()
        for f in checkpoint.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
    (d / "garbage_st" / "model.safetensors").write_bytes(np.random.default_rng(3).bytes(1000))
    blob = (checkpoint / "model.safetensors").read_bytes()
    (d / "truncated_st" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    for name in ("not_json", "not_object"):
        for f in (d / name).glob("*.json"):
            f.write_text("{not json" if name == "not_json" else "[1, 2]")
    save_file({k: v.to(torch.int32) for k, v in weights.items()}, str(d / "int32" / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, str(d / "nan" / "model.safetensors"))
    return d


@pytest.fixture
def no_model(monkeypatch):
    """Checks that must come before any model is built: building one fails the test."""
    from fastfields.models import lrm

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(lrm.LRM, "from_preset", classmethod(refuse))
    monkeypatch.setattr(lrm.LRM, "from_pretrained", classmethod(refuse))


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def lrm_argv(d, *extra, image=IMAGE):
    return ["lrm", str(image), "--preset", "tiny", "--views", "1", "--render-size", "8", "--mesh-resolution", "0",
            "--no-progress", "--out", str(d / "out"), *extra]


# --------------------------------------------------------------------------- bench and info


BENCH = [
    (["--op", "foo"], ["--op", "triplane_sample", "'foo'"]),
    (["--backend", "foo"], ["--backend", "triton, cuda, cpu", "'foo'"]),
    (["--threads", "0"], ["--threads", ">= 1"]),
    (["--threads", "-2"], ["--threads", ">= 1"]),
    (["--device", "foo"], ["--device", "cpu, cuda or cuda:N"]),
    (["--device", "tpu"], ["--device", "cpu, cuda or cuda:N"]),
] + ([] if CUDA else [(["--device", "cuda"], ["--device cuda", "CUDA is not available"]),
                      (["--backend", "cuda"], ["--backend cuda", "cannot run on cpu"])])


@pytest.mark.parametrize("argv, needles", BENCH, ids=[" ".join(a) for a, _ in BENCH])
def test_bench_bad_arguments(argv, needles, capsys, monkeypatch):
    from fastfields import bench

    monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail("bench ran despite a bad argument"))
    code, _, err = run_cli(["bench", *argv, "--no-write"], capsys)
    assert_usage_error(code, err, *needles)


def test_bench_out_is_a_file(files, capsys, monkeypatch):
    from fastfields import bench

    monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail("bench ran despite a bad --out"))
    code, _, err = run_cli(["bench", "--op", "composite", "--out", str(files / "a_file")], capsys)
    assert_usage_error(code, err, "--out", "is a file")


def test_bench_writes_its_report_for_a_good_op(tmp_path, capsys, monkeypatch):
    from fastfields import bench

    row = {"op": "composite", "case": "c", "layout": "standard", "backend": "eager (baseline)", "pass": "fwd", "ms": 1.0,
           "speedup": 1.0, "peak_mb": 1.0, "memory_ratio": 1.0, "gbps": None, "pct_peak_bw": None}
    monkeypatch.setattr(bench, "run", lambda **kw: [row])
    code, out, _ = run_cli(["bench", "--op", "composite", "--threads", "1", "--device", "cpu", "--no-scaling",
                            "--out", str(tmp_path)], capsys)
    assert code == 0 and "wrote" in out
    assert sorted(p.suffix for p in tmp_path.iterdir() if not p.name.startswith(".")) >= [".json", ".md"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


# --------------------------------------------------------------------------- lrm


LRM_BEFORE_MODEL = [
    ("empty image", {"image": "empty.png"}, [], ["IMAGE", "empty.png", "not a readable image"]),
    ("garbage image", {"image": "garbage.png"}, [], ["IMAGE", "garbage.png", "not a readable image"]),
    ("truncated image", {"image": "truncated.png"}, [], ["IMAGE", "truncated.png", "truncated"]),
    ("missing image", {"image": "nothere.png"}, [], ["IMAGE", "nothere.png", "no such file"]),
    ("out is a file", {}, ["--out", "{d}/a_file"], ["--out", "is a file"]),
    ("out under a file", {}, ["--out", "{d}/a_file/sub"], ["--out", "under", "a_file"]),
    ("out unwritable", {}, ["--out", "/proc/fastfields-out"], ["--out", "cannot write there"]),
    ("fps 0", {}, ["--fps", "0"], ["--fps", ">= 1"]),
    ("fps negative", {}, ["--fps", "-3"], ["--fps", ">= 1"]),
    ("render-size 0", {}, ["--render-size", "0"], ["--render-size", ">= 1"]),
    ("views negative", {}, ["--views", "-1"], ["--views", ">= 0"]),
    ("mesh-resolution 1", {}, ["--mesh-resolution", "1"], ["--mesh-resolution", ">= 2 or 0"]),
    ("mesh-threshold nan", {}, ["--mesh-threshold", "nan"], ["--mesh-threshold", "finite"]),
    ("mesh-threshold inf", {}, ["--mesh-threshold", "inf"], ["--mesh-threshold", "finite"]),
    ("border-ratio nan", {}, ["--border-ratio", "nan"], ["--border-ratio", "finite"]),
    ("backend foo", {}, ["--backend", "foo"], ["--backend", "'foo'"]),
    ("checkpoint missing", {}, ["--checkpoint", "{d}/nothere"], ["--checkpoint", "no such file"]),
    ("config.json not json", {}, ["--checkpoint", "{d}/not_json"], ["--checkpoint", "json", "not valid JSON"]),
    ("config.json not an object", {}, ["--checkpoint", "{d}/not_object"], ["--checkpoint", "json", "JSON object"]),
    ("int32 weights", {}, ["--checkpoint", "{d}/int32"], ["--checkpoint", "floating point", "I32"]),
    ("device foo", {}, ["--device", "foo"], ["--device", "cpu, cuda or cuda:N"]),
] + ([] if CUDA else [("device cuda", {}, ["--device", "cuda"], ["--device cuda", "CUDA is not available"])])


@pytest.mark.parametrize("name, where, extra, needles", LRM_BEFORE_MODEL, ids=[c[0] for c in LRM_BEFORE_MODEL])
def test_lrm_bad_input_is_refused_before_the_model_loads(files, no_model, capsys, name, where, extra, needles):
    image = files / where["image"] if "image" in where else IMAGE
    extra = [e.format(d=files) for e in extra]
    weights = [] if "--checkpoint" in extra else ["--random-init"]
    if "--checkpoint" in extra:  # config.json is read, so no --preset
        argv = [a for a in lrm_argv(files, *extra, image=image) if a not in ("--preset", "tiny")]
    else:
        argv = lrm_argv(files, *weights, *extra, image=image)
    code, _, err = run_cli(argv, capsys)
    assert_usage_error(code, err, "fastfields lrm:", *needles)


@pytest.mark.parametrize("name, needles", [
    ("garbage_st", ["--checkpoint", "garbage_st", "OpenLRM checkpoint", "SafetensorError"]),
    ("truncated_st", ["--checkpoint", "truncated_st", "OpenLRM checkpoint", "SafetensorError"]),
    ("garbage.pth", ["--checkpoint", "garbage.pth", "OpenLRM checkpoint"]),
])
def test_lrm_unloadable_checkpoint(files, capsys, name, needles):
    code, _, err = run_cli(lrm_argv(files, "--checkpoint", str(files / name)), capsys)
    assert_usage_error(code, err, *needles)


def test_lrm_missing_optional_dependency_names_the_extra(files, no_model, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mcubes", None)  # import mcubes -> ImportError
    code, _, err = run_cli(lrm_argv(files, "--random-init"), capsys)
    assert_usage_error(code, err, "PyMCubes", "pip install 'fastfields[models]'")


def test_lrm_all_nan_checkpoint_warns(files, capsys):
    code, out, err = run_cli(lrm_argv(files, "--checkpoint", str(files / "nan")), capsys)
    assert code == 0
    assert "WARNING" in err and "non-finite" in err and "parameter tensor" in err
    assert "pixel(s) of the rendered views are NaN" in err


def test_lrm_no_weights(files, no_model, capsys):
    code, _, err = run_cli(["lrm", str(IMAGE), "--out", str(files / "out")], capsys)
    assert code == 2 and "--checkpoint" in err and "--random-init" in err


# --------------------------------------------------------------------------- zerorf


ZERORF = [
    (["--data", "{d}/garbage.npz"], ["--data", "garbage.npz", "as a scene"]),
    (["--data", "{d}/nothere.npz"], ["--data", "no such file"]),
    (["--mesh-threshold", "nan"], ["--mesh-threshold", "finite"]),
    (["--mesh-res", "1"], ["--mesh-res", ">= 2 or 0"]),
    (["--threads", "0"], ["--threads", ">= 1"]),
    (["--views", "0"], ["--views", ">= 1"]),
    (["--iters", "0"], ["--iters", ">= 1"]),
    (["--bound", "nan"], ["--bound", "finite"]),
    (["--out", "{d}/a_file/x"], ["--out", "a_file"]),
    (["--device", "foo"], ["--device", "cpu, cuda or cuda:N"]),
] + ([] if CUDA else [(["--device", "cuda"], ["--device cuda", "CUDA is not available"])])


@pytest.mark.parametrize("extra, needles", ZERORF, ids=[" ".join(e) for e, _ in ZERORF])
def test_zerorf_bad_input(files, capsys, monkeypatch, extra, needles):
    from fastfields.models import zerorf

    monkeypatch.setattr(zerorf.ZeroRF, "fit", classmethod(lambda *a, **k: pytest.fail("fitted despite bad input")))
    argv = ["zerorf", "--config", "tiny", "--out", str(files / "zout"), *[e.format(d=files) for e in extra]]
    code, _, err = run_cli(argv, capsys)
    assert_usage_error(code, err, "fastfields zerorf:", *needles)


def test_zerorf_lists_only_what_it_wrote(tmp_path, capsys):
    code, out, _ = run_cli(["zerorf", "--config", "tiny", "--iters", "2", "--views", "2", "--eval-views", "1",
                            "--renders", "0", "--turntable", "0", "--mesh-res", "0", "--no-progress",
                            "--out", str(tmp_path)], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("wrote"))
    assert "turntable.gif" not in line and "mesh.ply" not in line and "renders/" not in line
    for name in ("model.safetensors", "metrics.json"):
        assert name in line and (tmp_path / name).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.safetensors"]  # no temporary left


# --------------------------------------------------------------------------- lrm-train


LRM_TRAIN = [
    (["--steps", "0"], ["--steps", ">= 1"]),
    (["--rays", "-1"], ["--rays", ">= 1"]),
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--device", "foo"], ["--device", "cpu, cuda or cuda:N"]),
    (["--out", "{d}/a_file/x"], ["--out", "a_file"]),
]


@pytest.mark.parametrize("extra, needles", LRM_TRAIN, ids=[" ".join(e) for e, _ in LRM_TRAIN])
def test_lrm_train_bad_input(files, no_model, capsys, extra, needles):
    argv = ["lrm-train", "--data", str(ROOT / "data" / "mic" / "mic_train_100.npz"), *[e.format(d=files) for e in extra]]
    code, _, err = run_cli(argv, capsys)
    assert_usage_error(code, err, "fastfields lrm-train:", *needles)


def test_lrm_train_missing_data(files, no_model, capsys):
    code, _, err = run_cli(["lrm-train", "--data", str(files / "nothere.npz")], capsys)
    assert_usage_error(code, err, "--data", "no such file")


# --------------------------------------------------------------------------- interruptions


def test_ctrl_c_exits_with_one_line_and_no_traceback(tmp_path):
    """A real SIGINT while a job runs: exit 130, one line, no traceback."""
    # The child restores Python's SIGINT handler: a test run started in the background of a
    # non-interactive shell inherits SIGINT ignored, and Python then keeps ignoring it.
    script = ("import signal, time, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from fastfields.cli import main\n"
              "import fastfields.bench as bench\n"
              "def slow(**kw):\n"
              "    print('started', flush=True)\n"
              "    time.sleep(60)\n"
              "bench.run = slow\n"
              "sys.exit(main(['bench', '--op', 'composite', '--no-write']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.strip()] == ["fastfields bench: interrupted"]


def test_interrupted_writer_leaves_no_partial_file(tmp_path, monkeypatch):
    import imageio

    from fastfields import export

    def interrupted(path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio, "imwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.save_image(tmp_path / "view.png", torch.rand(4, 4, 3))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "view.png").write_bytes(b"old")
    export.save_image(tmp_path / "view.png", torch.rand(4, 4, 3))
    assert (tmp_path / "view.png").read_bytes()[:4] == b"\x89PNG" and len(list(tmp_path.iterdir())) == 1


def test_export_missing_dependency_names_the_extra(monkeypatch, tmp_path):
    from fastfields import export

    monkeypatch.setitem(sys.modules, "trimesh", None)
    with pytest.raises(export.MissingDependency, match=r"trimesh.*pip install 'fastfields\[models\]'"):
        export.save_mesh(tmp_path / "m.ply", np.zeros((3, 3)), np.array([[0, 1, 2]]))
