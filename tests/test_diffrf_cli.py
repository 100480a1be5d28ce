"""``fastfields diffrf`` jobs end to end at toy sizes: every job writes fields, renders, a GIF and a mesh."""

import json

import pytest
import torch

from fastfields.apps.diffrf import main


def test_diffrf_jobs(tmp_path):
    pytest.importorskip("mcubes")
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["make-data", "--out", str(data), "--objects", "1", "--views", "4", "--image-size", "12",
                 "--fit-iters", "10", "--resolution", "8", "--no-progress"]) == 0
    assert sorted(p.name for p in data.glob("*.safetensors")) == ["car_00000.safetensors", "chair_00000.safetensors"]
    common = ["--render-size", "12", "--turntable", "2", "--no-progress"]
    assert main(["train", "--data", str(data), "--preset", "tiny", "--steps", "3", "--batch-size", "2", "--log-every", "1",
                 "--samples", "1", "--sample-steps", "2", "--out", str(run), *common]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["history"]["loss"]) == 3
    for name in ("model/model.safetensors", "ema/config.json", "samples/fields.safetensors", "samples/sample_0.gif",
                 "samples/sample_0_views.png"):
        assert (run / name).is_file(), name
    model = str(run / "ema")
    assert main(["sample", "--model", model, "--n", "1", "--steps", "2", "--out", str(tmp_path / "s"), *common]) == 0
    assert main(["complete", "--model", model, "--field", str(data / "chair_00000.safetensors"), "--mask", "x<0",
                 "--steps", "3", "--out", str(tmp_path / "c"), *common]) == 0
    from fastfields.models._pretrained import read_safetensors

    done = read_safetensors(tmp_path / "c" / "fields.safetensors")[0]["field"][0]
    given = read_safetensors(data / "chair_00000.safetensors")[0]["field"]
    assert torch.equal(done[..., :4], given[..., :4])  # x < 0 is the first half along W
    assert main(["from-image", str(tmp_path / "s" / "field_0_views.png"), "--pose", "0,20,2.6,45", "--model", model,
                 "--steps", "2", "--out", str(tmp_path / "f"), *common]) == 0
    for job in ("s", "c", "f"):
        for name in ("fields.safetensors", "field_0_views.png", "field_0.gif", "summary.json"):
            assert (tmp_path / job / name).is_file(), (job, name)
    with pytest.raises(SystemExit, match="no fitted fields"):
        main(["train", "--data", str(tmp_path / "s" / "nothing"), "--out", str(tmp_path / "x"), "--no-progress"])


def test_train_on_a_posed_view_dataset(tmp_path):
    """``--data`` a ``fastfields.datasets`` folder: fields are fitted (mesh-initialised) once and cached."""
    datasets = pytest.importorskip("fastfields.datasets")
    root = datasets.build_dataset(tmp_path / "ds", categories=("chair",), objects_per_category=1, views=3, resolution=16,
                                  include_meshes=False, split={"train": 1}, supersample=1)
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--preset", "tiny", "--steps", "1", "--batch-size", "1", "--fit-iters", "3",
            "--samples", "0", "--out", str(run), "--no-progress"]
    assert main(args) == 0
    cached = sorted((root / "diffrf_fields").glob("*.safetensors"))
    assert [p.name for p in cached] == ["chair_0000.safetensors"]
    config = json.loads((run / "model" / "config.json").read_text())["config"]
    assert config["bound"] == 0.55  # the dataset's objects fit [-0.5, 0.5]^3
    from fastfields.models._pretrained import read_safetensors

    field = read_safetensors(cached[0])[0]["field"]
    assert field.shape == (4, 32, 32, 32) and (field[0] > 0).any() and (field[0] < 0).any()  # mesh init: a shape
    mtime = cached[0].stat().st_mtime_ns
    assert main(args) == 0 and cached[0].stat().st_mtime_ns == mtime  # second run reads the cache
