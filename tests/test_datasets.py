"""fastfields.datasets: procedural shapes, shipped meshes, the CPU renderer, the SRN layout, the builder."""

import json

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("PIL")

from fastfields.datasets import (  # noqa: E402
    CATEGORIES,
    FIT_RADIUS,
    MESHES,
    SRNDataset,
    build_dataset,
    load_mesh,
    make_shape,
    render_views,
    sample_cameras,
    srn_intrinsics,
    write_srn_object,
)
from fastfields.rendering import orbit_cameras, rays_from_cameras  # noqa: E402


# --- procedural shapes and meshes --------------------------------------------------------------

@pytest.mark.parametrize("category", CATEGORIES)
def test_make_shape_is_deterministic_normalised_and_coloured(category):
    a, b = make_shape(category, 3), make_shape(category, 3)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.visual.face_colors, b.visual.face_colors)
    assert a.visual.kind == "face" and len(a.visual.face_colors) == len(a.faces)
    lo, hi = a.bounds
    assert np.all(lo >= -0.5 - 1e-9) and np.all(hi <= 0.5 + 1e-9)
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-9)
    assert np.linalg.norm(a.vertices, axis=1).max() <= FIT_RADIUS + 1e-9
    # it touches the cube or the sphere: the normalisation is tight
    assert max(hi.max() * 2, np.linalg.norm(hi - lo) / 2 / FIT_RADIUS) == pytest.approx(1.0)


@pytest.mark.parametrize("category", CATEGORIES)
def test_shapes_vary_across_seeds(category):
    shapes = [make_shape(category, seed) for seed in range(6)]
    extents = np.stack([s.extents for s in shapes])
    colors = np.stack([s.visual.face_colors[0] for s in shapes])
    assert len({tuple(e.round(4)) for e in extents}) == 6  # proportions differ
    assert len({tuple(c) for c in colors}) > 1  # colours differ
    # and the categories differ from each other at one seed
    assert not np.allclose(make_shape(category, 0).extents, make_shape(CATEGORIES[CATEGORIES.index(category) - 1], 0).extents)


def test_make_shape_errors():
    with pytest.raises(ValueError, match="category must be one of"):
        make_shape("spaceship", 0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        make_shape("chair", -1)


@pytest.mark.parametrize("name", sorted(MESHES))
def test_load_mesh(name):
    mesh = load_mesh(name)
    assert mesh.visual.kind == "vertex"
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert colors.std(axis=0).max() > 5  # sampled from the texture, not a constant
    lo, hi = mesh.bounds
    assert np.all(lo >= -0.5 - 1e-9) and np.all(hi <= 0.5 + 1e-9)
    assert np.linalg.norm(mesh.vertices, axis=1).max() <= FIT_RADIUS + 1e-9
    with pytest.raises(ValueError, match="name must be one of"):
        load_mesh("teapot")


# --- renderer ----------------------------------------------------------------------------------

def tiny_scene():
    """Two overlapping triangles and a tetrahedron: occlusion, both windings, a silhouette."""
    vertices = np.array([
        [-0.4, -0.3, 0.0], [0.4, -0.2, 0.05], [0.0, 0.45, -0.1],      # triangle 1
        [-0.2, -0.4, 0.2], [0.3, 0.3, 0.25], [-0.35, 0.2, 0.15],      # triangle 2 (reversed winding), in front of 1 in places
        [0.1, 0.0, -0.3], [0.3, 0.1, -0.25], [0.2, 0.3, -0.2], [0.2, 0.15, -0.05],  # tetrahedron
    ])
    faces = np.array([[0, 1, 2], [3, 5, 4], [6, 7, 8], [6, 9, 7], [7, 9, 8], [8, 9, 6]])
    colors = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [0, 0, 200, 255],
                       [0, 0, 150, 255], [0, 0, 100, 255]], dtype=np.uint8)
    return trimesh.Trimesh(vertices, faces, face_colors=colors, process=False)


def brute_force(mesh, c2w, K, H, W):
    """Per pixel centre, the nearest ray-triangle hit (Moller-Trumbore): depth [V, H, W] and face [V, H, W]."""
    rays_o, rays_d = rays_from_cameras(c2w, K, H, W, normalize_directions=False)  # t = z-depth
    tri = torch.as_tensor(mesh.vertices, dtype=torch.float64)[torch.as_tensor(mesh.faces)]
    o, d = rays_o[:, :, None], rays_d[:, :, None]  # [V, P, 1, 3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = torch.linalg.cross(d, e2.expand_as(d.expand(-1, -1, len(tri), -1)))
    det = (e1 * p).sum(-1)
    s = o - tri[:, 0]
    u = (s * p).sum(-1) / det
    q = torch.linalg.cross(s, e1.expand_as(s))
    v = (d * q).sum(-1) / det
    t = (e2 * q).sum(-1) / det
    hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0) & (det.abs() > 1e-15)
    t = torch.where(hit, t, torch.full_like(t, float("inf")))
    depth, face = t.min(-1)
    face = torch.where(torch.isfinite(depth), face, torch.full_like(face, -1))
    V = c2w.shape[0]
    return depth.view(V, H, W), face.view(V, H, W)


def test_renderer_matches_brute_force_ray_casting():
    mesh = tiny_scene()
    H, W = 24, 30
    c2w = orbit_cameras(5, 1.5, elevation=20.0, azimuth_start=10.0, convention="opencv", up="z", dtype=torch.float64)
    K = torch.tensor([[32.0, 30.0, 14.5, 12.25]], dtype=torch.float64).expand(5, 4)  # fx != fy, off-centre
    rgba, depth = render_views(mesh, c2w, K, H, W, supersample=1, return_depth=True, shading=False)
    ref_depth, ref_face = brute_force(mesh, c2w, K, H, W)
    silhouette, ref_silhouette = rgba[..., 3] > 0, torch.isfinite(ref_depth)
    assert ref_silhouette.float().mean() > 0.05  # the scene is in view
    assert (silhouette == ref_silhouette).all()
    assert (torch.isfinite(depth) == ref_silhouette).all()
    torch.testing.assert_close(depth[ref_silhouette].double(), ref_depth[ref_silhouette], rtol=1e-5, atol=1e-5)
    # the unlit colour is the colour of the nearest face (occlusion resolved as the ray caster does)
    face_rgb = torch.as_tensor(mesh.visual.face_colors[:, :3] / 255.0, dtype=torch.float32)
    torch.testing.assert_close(rgba[..., :3][ref_silhouette], face_rgb[ref_face[ref_silhouette]], rtol=0, atol=1e-6)
    assert (rgba[..., :3][~ref_silhouette] == 0).all()


def test_render_supersampled_alpha_is_coverage_and_depth_at_centres():
    mesh = tiny_scene()
    c2w = orbit_cameras(2, 1.5, elevation=30.0, convention="opencv", up="z", dtype=torch.float64)
    K = torch.tensor([20.0, 20.0, 8.0, 8.0], dtype=torch.float64)
    rgba4, depth4 = render_views(mesh, c2w, K, 16, 16, supersample=4, return_depth=True)
    _, depth1 = render_views(mesh, c2w, K, 16, 16, supersample=1, return_depth=True)
    torch.testing.assert_close(depth4, depth1)  # depth is taken at the pixel centres
    alpha = rgba4[..., 3]
    assert ((alpha > 0) & (alpha < 1)).any()  # anti-aliased edges
    assert torch.allclose(alpha * 16, (alpha * 16).round(), atol=1e-5)  # coverage of 16 samples
    # coverage equals a 64^2 render area-averaged to 16^2
    big = render_views(mesh, c2w, K * 4, 64, 64, supersample=1)[..., 3]
    torch.testing.assert_close(alpha, big.view(2, 16, 4, 16, 4).mean(dim=(2, 4)))


def test_projection_of_known_points_lands_where_the_intrinsics_say():
    """A tiny camera-facing square at a known 3D point: its alpha centroid is at K [R | t]^-1 X."""
    c2w = orbit_cameras(3, 2.0, elevation=35.0, azimuth_start=70.0, convention="opencv", up="z", dtype=torch.float64)
    K = torch.tensor([60.0, 55.0, 27.3, 21.8], dtype=torch.float64)
    H, W = 48, 56
    points = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [-0.25, 0.15, -0.2]], dtype=torch.float64)
    for view in range(3):
        R, t = c2w[view, :3, :3], c2w[view, :3, 3]
        for X in points:
            right, down = R[:, 0] * 0.08, R[:, 1] * 0.08  # parallel to the image plane: its image is a square
            corners = torch.stack([X - right - down, X + right - down, X + right + down, X - right + down]).numpy()
            square = trimesh.Trimesh(corners, [[0, 1, 2], [0, 2, 3]], process=False)
            # centroid of the covered pixel centres of an 8x finer image (8x the intrinsics), in coarse pixels
            alpha = render_views(square, c2w[view:view + 1], K * 8, H * 8, W * 8, supersample=1)[0, ..., 3].double()
            assert alpha.sum() > 500
            rows, cols = torch.meshgrid(torch.arange(H * 8) + 0.5, torch.arange(W * 8) + 0.5, indexing="ij")
            centroid = torch.stack([(alpha * cols).sum(), (alpha * rows).sum()]) / alpha.sum() / 8
            x = R.T @ (X - t)
            expected = torch.stack([K[0] * x[0] / x[2] + K[2], K[1] * x[1] / x[2] + K[3]])
            # half a fine pixel bounds the sampling error; a half-pixel convention slip would be 0.5
            torch.testing.assert_close(centroid, expected, rtol=0, atol=1 / 16)


def test_render_errors_name_the_argument():
    mesh = tiny_scene()
    c2w = orbit_cameras(2, 1.5, convention="opencv", up="z")
    with pytest.raises(ValueError, match="c2w must have shape"):
        render_views(mesh, torch.eye(4), torch.ones(4), 8, 8)
    with pytest.raises(ValueError, match="intrinsics must have shape"):
        render_views(mesh, c2w, torch.ones(3, 4), 8, 8)
    with pytest.raises(ValueError, match="fx and fy must be positive"):
        render_views(mesh, c2w, torch.tensor([0.0, 1.0, 4.0, 4.0]), 8, 8)
    with pytest.raises(ValueError, match="height must be a positive int"):
        render_views(mesh, c2w, torch.tensor([8.0, 8.0, 4.0, 4.0]), 0, 8)


# --- SRN layout --------------------------------------------------------------------------------

def test_srn_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    V, H, W = 3, 10, 12
    rgba = rng.integers(0, 256, (V, H, W, 4)).astype(np.uint8)
    c2w = sample_cameras(V, 1.3, rng).numpy()
    K = np.array([11.0, 11.0, 6.0, 5.0])
    write_srn_object(tmp_path / "train", "obj_a", rgba, c2w, K)
    assert (tmp_path / "train" / "obj_a" / "intrinsics.txt").read_text().splitlines()[3] == f"{H} {W}"
    data = SRNDataset(tmp_path, split="train")
    assert len(data) == 1 and data.ids == ["obj_a"]
    item = data[0]
    assert item["id"] == "obj_a"
    a = rgba[..., 3:] / 255.0
    np.testing.assert_allclose(item["images"].numpy(), rgba[..., :3] / 255.0 * a + 1 - a, atol=1e-6)
    np.testing.assert_allclose(item["alpha"].numpy(), rgba[..., 3] / 255.0, atol=1e-7)
    np.testing.assert_allclose(item["c2w"].numpy(), c2w, atol=1e-7)
    np.testing.assert_allclose(item["intrinsics"].numpy(), np.broadcast_to(K, (V, 4)))
    for key, dtype in (("images", torch.float32), ("alpha", torch.float32), ("c2w", torch.float32), ("intrinsics", torch.float32)):
        assert item[key].dtype == dtype
    # resized on load: intrinsics follow the image, a uniform image stays uniform
    write_srn_object(tmp_path / "flat", "o", np.full((1, 8, 8, 4), 200, np.uint8), c2w[:1], [9.0, 9.0, 4.0, 4.0])
    small = SRNDataset(tmp_path / "flat", image_size=4)[0]
    assert small["images"].shape == (1, 4, 4, 3)
    np.testing.assert_allclose(small["intrinsics"][0].numpy(), [4.5, 4.5, 2.0, 2.0])
    np.testing.assert_allclose(small["images"].numpy(), 200 / 255 * 200 / 255 + 1 - 200 / 255, atol=1e-6)


def test_srn_reads_rgb_only_srn_folder(tmp_path):
    """SRN's own files: RGB on white, pose as one line of 16 numbers, intrinsics for another size."""
    from PIL import Image

    folder = tmp_path / "cars_train" / "1a2b3c"
    (folder / "rgb").mkdir(parents=True)
    (folder / "pose").mkdir()
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(image).save(folder / "rgb" / "000000.png")
    pose = np.arange(16, dtype=np.float64).reshape(4, 4) / 10
    (folder / "pose" / "000000.txt").write_text(" ".join(str(x) for x in pose.reshape(-1)) + "\n")
    (folder / "intrinsics.txt").write_text("131.250000 64.000000 64.000000 0.\n0. 0. 0.\n1.\n128 128\n")
    item = SRNDataset(tmp_path, split="train")[0]  # found as cars_train/
    assert item["id"] == "1a2b3c"
    np.testing.assert_allclose(item["images"][0].numpy(), image / 255.0, atol=1e-7)
    assert (item["alpha"] == 1).all()
    np.testing.assert_allclose(item["c2w"][0].numpy(), pose, atol=1e-7)
    np.testing.assert_allclose(item["intrinsics"][0].numpy(), [16.40625, 16.40625, 8.0, 8.0])  # 128 -> 16 px


def test_srn_errors_name_the_file(tmp_path):
    rgba = np.zeros((2, 4, 4, 4), np.uint8)
    c2w = np.tile(np.eye(4), (2, 1, 1))
    folder = write_srn_object(tmp_path, "o", rgba, c2w, [4.0, 4.0, 2.0, 2.0])
    (folder / "rgb" / "000001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*000001.png"):
        SRNDataset(tmp_path)[0]
    write_srn_object(tmp_path, "o", rgba, c2w, [4.0, 4.0, 2.0, 2.0])
    (folder / "pose" / "000001.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="000001.txt must hold 16 finite numbers"):
        SRNDataset(tmp_path)[0]
    (folder / "pose" / "000001.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing pose file .*000001.txt"):
        SRNDataset(tmp_path)[0]
    write_srn_object(tmp_path, "o", rgba, c2w, [4.0, 4.0, 2.0, 2.0])
    (folder / "intrinsics.txt").write_text("garbage\n")
    with pytest.raises(ValueError, match="intrinsics.txt is not an SRN intrinsics file"):
        SRNDataset(tmp_path)[0]
    with pytest.raises(FileNotFoundError, match="split 'val' not found"):
        SRNDataset(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="no object folders"):
        SRNDataset(tmp_path / "o" / "rgb")
    with pytest.raises(ValueError, match="rgba must have shape"):
        write_srn_object(tmp_path, "p", rgba[0], c2w, [4.0, 4.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="c2w must have shape"):
        write_srn_object(tmp_path, "p", rgba, c2w[:1], [4.0, 4.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="fx == fy"):
        write_srn_object(tmp_path, "p", rgba, c2w, [4.0, 5.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="object_id must be"):
        write_srn_object(tmp_path, "../p", rgba, c2w, [4.0, 4.0, 2.0, 2.0])


# --- builder -----------------------------------------------------------------------------------

def test_build_dataset_is_deterministic_and_srn_like(tmp_path):
    kwargs = dict(categories=("chair", "car"), objects_per_category=2, views=3, resolution=24, seed=5,
                  split={"train": 1, "test": 1}, supersample=1)
    a = build_dataset(tmp_path / "a", include_meshes=True, **kwargs)
    b = build_dataset(tmp_path / "b", include_meshes=False, **kwargs)
    info = json.loads((a / "dataset.json").read_text())
    assert info["splits"] == {"train": ["chair_0000", "car_0000", "mesh_spot", "mesh_avocado"], "test": ["chair_0001", "car_0001"]}
    assert info["camera"]["intrinsics"]["fx"] == pytest.approx(131.25 * 24 / 128)
    for split in ("train", "test"):  # the same seed gives the same files, byte for byte
        for path in sorted((b / split).rglob("*.*")):
            assert path.read_bytes() == (a / path.relative_to(b)).read_bytes(), path
    c = build_dataset(tmp_path / "c", include_meshes=False, **dict(kwargs, seed=6))
    assert (c / "test/car_0001/rgb/000000.png").read_bytes() != (b / "test/car_0001/rgb/000000.png").read_bytes()

    train = SRNDataset(a, split="train")
    assert train.ids == ["car_0000", "chair_0000", "mesh_avocado", "mesh_spot"]
    for i in range(len(train)):
        item = train[i]
        assert item["images"].shape == (3, 24, 24, 3)
        centres = item["c2w"][:, :3, 3]
        torch.testing.assert_close(centres.norm(dim=-1), torch.full((3,), 1.3))
        assert (centres[:, 2] >= 0).all()  # upper hemisphere
        torch.testing.assert_close(item["c2w"][:, :3, 2], -centres / 1.3, atol=1e-6, rtol=0)  # looks at the origin (+z)
        assert item["alpha"].sum() > 0
        border = torch.cat([item["alpha"][:, 0], item["alpha"][:, -1], item["alpha"][:, :, 0], item["alpha"][:, :, -1]], 1)
        assert (border == 0).all()  # the whole object is in view
    with pytest.raises(FileExistsError, match="overwrite"):
        build_dataset(tmp_path / "a", **kwargs)


def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="categories must be among"):
        build_dataset(tmp_path, categories=("spaceship",))
    with pytest.raises(ValueError, match="must sum to objects_per_category"):
        build_dataset(tmp_path, objects_per_category=4, split={"train": 3, "test": 2})
    with pytest.raises(ValueError, match="fractions .* must sum to 1"):
        build_dataset(tmp_path, split={"train": 0.5, "test": 0.2})
    with pytest.raises(ValueError, match="camera_distance must be"):
        build_dataset(tmp_path, camera_distance=0.3)
    with pytest.raises(ValueError, match="views must be an int"):
        build_dataset(tmp_path, views=0)


def test_cli_dataset_build(tmp_path, capsys):
    from fastfields.cli import main

    out = tmp_path / "cli"
    assert main(["dataset", "build", "--out", str(out), "--categories", "table", "--objects", "2", "--views", "2",
                 "--resolution", "16", "--train-fraction", "0.5", "--no-meshes", "--no-progress", "--supersample", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert SRNDataset(out, split="test").ids == ["table_0001"]
    assert srn_intrinsics(16)[0] == pytest.approx(131.25 / 8)
