"""EG3D against the official code itself, where a checkout of NVlabs/eg3d is present.

Set ``EG3D_SRC`` to the checkout's ``eg3d/`` folder (the one holding ``training/``,
``torch_utils/``, ``dnnlib/``). A subprocess builds an official ``TriPlaneGenerator`` (ffhq512
layout with fewer channels), pickles it as the training loop does and renders with seeded
draws; here the pickle is converted without importing any of that code, and our model must
reproduce the official images (const and random noise, the renderer's jitter and importance
draws from torch's global generator) to float32 rounding. Skipped without ``EG3D_SRC``.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SRC = os.environ.get("EG3D_SRC")

OFFICIAL = textwrap.dedent('''
    import sys, pickle, numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    import dnnlib
    from training.triplane import TriPlaneGenerator
    from camera_utils import LookAtPoseSampler, FOV_to_intrinsics
    rk = dict(image_resolution=512, disparity_space_sampling=False, clamp_mode='softplus',
              superresolution_module='training.superresolution.SuperresolutionHybrid8XDC', c_gen_conditioning_zero=False,
              gpc_reg_prob=0.5, c_scale=1, superresolution_noise_mode='none', density_reg=0.25, density_reg_p_dist=0.004,
              reg_type='l1', decoder_lr_mul=1, sr_antialias=True, depth_resolution=48, depth_resolution_importance=48,
              ray_start=2.25, ray_end=3.3, box_warp=1, avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])
    torch.manual_seed(0)
    G = TriPlaneGenerator(z_dim=512, w_dim=512, mapping_kwargs=dnnlib.EasyDict(num_layers=2), channel_base=1024,
                          channel_max=64, fused_modconv_default='inference_only', rendering_kwargs=rk, num_fp16_res=0,
                          conv_clamp=None, sr_num_fp16_res=4, c_dim=25, img_resolution=512, img_channels=3,
                          sr_kwargs=dnnlib.EasyDict(channel_base=1024, channel_max=64, fused_modconv_default='inference_only'))
    G.register_buffer('dataset_label_std', torch.rand(25))
    with torch.no_grad():
        for n, p in G.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if n.endswith('noise_strength') else 0.05))
        G.backbone.mapping.w_avg.normal_()
    G.neural_rendering_resolution = 32
    G.eval()
    with open(sys.argv[2], 'wb') as f:
        pickle.dump(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None), f)
    z = torch.randn(2, 512)
    intr = FOV_to_intrinsics(18.837)
    poses = [LookAtPoseSampler.sample(np.pi / 2 + y, np.pi / 2, torch.tensor([0, 0, 0.2]), radius=2.7) for y in (0.3, -0.2)]
    c = torch.cat([torch.cat([p.reshape(-1, 16), intr.reshape(-1, 9)], 1) for p in poses])
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=14)
        torch.manual_seed(123)
        const = G.synthesis(ws, c, noise_mode='const')
        torch.manual_seed(7)
        rand = G.synthesis(ws, c, noise_mode='random')
    torch.save(dict(z=z, c=c, ws=ws, const=const, rand=rand), sys.argv[3])
''')


@pytest.mark.slow
@pytest.mark.skipif(not SRC, reason="set EG3D_SRC to an NVlabs/eg3d checkout's eg3d/ folder")
def test_official_pickle_converts_and_reproduces_official_images(tmp_path):
    from fastfields.models.eg3d import EG3D
    from fastfields.models.eg3d.convert import convert

    pkl, outputs = tmp_path / "official.pkl", tmp_path / "official.pt"
    subprocess.run([sys.executable, "-c", OFFICIAL, SRC, str(pkl), str(outputs)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    _, path = convert(pkl, tmp_path / "official.safetensors")
    assert "training" not in sys.modules and "torch_utils" not in sys.modules  # nothing of EG3D's code was imported
    G = EG3D.from_pretrained(path).eval()
    expected = torch.load(outputs)
    with torch.no_grad():
        ws = G.mapping(expected["z"], expected["c"], truncation_psi=0.7, truncation_cutoff=14)
        torch.testing.assert_close(ws, expected["ws"], rtol=0, atol=1e-6)
        for mode, seed in (("const", 123), ("rand", 7)):
            torch.manual_seed(seed)
            out = G.synthesis(ws, expected["c"], noise_mode="const" if mode == "const" else "random")
            for key in ("image", "image_raw", "image_depth"):
                torch.testing.assert_close(out[key], expected[mode][key], rtol=1e-4, atol=1e-4, msg=f"{mode} {key}")
