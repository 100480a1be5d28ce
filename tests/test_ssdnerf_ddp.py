"""SSDNeRF training under torch.distributed (two CPU processes, gloo): the shared networks stay
identical across ranks although each rank trains different scenes from a different init."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _worker(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from fastfields.models.ssdnerf import SSDNeRF
    from fastfields.models.ssdnerf.scenes import make_scenes
    from fastfields.models.ssdnerf.train import Trainer

    torch.manual_seed(rank)  # different initialisations: the trainer must broadcast rank 0's
    model = SSDNeRF.from_preset("tiny", overrides=dict(grid_size=8, extra_scene_step=1, n_inverse_rays=128,
                                                       n_decoder_rays=128))
    trainer = Trainer(model, make_scenes(4, views=2, resolution=12, seed=0), batch_size=2, device="cpu", seed=0)
    trainer.train(1, progress=False)
    weights = torch.cat([model.decoder.base_net[0].weight.detach().flatten(),
                         model.diffusion.denoising.in_blocks[0][0].weight.detach().flatten()])
    gathered = [torch.zeros_like(weights) for _ in range(2)]
    dist.all_gather(gathered, weights)
    out[rank] = (trainer.scene_ids, bool(torch.equal(gathered[0], gathered[1])))
    dist.destroy_process_group()


@pytest.mark.slow  # ~40 s: two fresh processes import torch and fastfields
def test_two_rank_training_keeps_networks_in_sync():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    assert out[0] == ([0, 2], True) and out[1] == ([1, 3], True)
