"""Convert an official SSDNeRF checkpoint (mmcv ``.pth``) to our safetensors format.

    python -m fastfields.models.ssdnerf.convert ssdnerf_cars_uncond.pth cars_uncond.safetensors
    python -m fastfields.models.ssdnerf.convert IN.pth OUT.safetensors --preset chairs_recons1v

The ``.pth`` is read with :func:`fastfields.models._pretrained.load_pickle_restricted`
(tensors and plain containers only; nothing in it is executed). mmcv/mmgen objects that may
sit in its ``meta`` (configs, hook messages) are stubbed as plain dicts and dropped; only
``state_dict`` is used, and it must fit the preset exactly (strict loading lists every problem).
Without ``--preset`` the layout decides: dropout layers (``conv_2.2``) mean ``cars_recons1v``,
otherwise ``cars_uncond`` (the other presets have the same tensors; pass the right one to get
its test settings).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import torch

from .._pretrained import CheckpointError, load_pickle_restricted, load_state_dict_strict, stub_class
from .model import SSDNeRF

#: Classes mmcv / mmgen checkpoints are known to pickle into ``meta``: read as plain dicts.
STUBBED = (
    ("mmcv.utils.config", "Config"), ("mmcv.utils.config", "ConfigDict"), ("mmcv.fileio.file_client", "FileClient"),
    ("addict.addict", "Dict"),
)


def read_official(path, extra_stubs: Iterable[Tuple[str, str]] = ()) -> Dict[str, torch.Tensor]:
    """The ``state_dict`` of an official checkpoint (``module.`` prefixes stripped)."""
    allow = {key: stub_class(*key) for key in (*STUBBED, *extra_stubs)}
    blob = load_pickle_restricted(path, allow=allow)
    if isinstance(blob, dict) and "state_dict" in blob:
        state = blob["state_dict"]
    elif isinstance(blob, dict) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        state = blob
    else:
        raise CheckpointError(f"{str(path)!r}: expected an mmcv checkpoint (a dict with 'state_dict') or a state dict")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{str(path)!r}: state_dict[{k!r}] is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def guess_preset(state: Dict[str, torch.Tensor]) -> str:
    return "cars_recons1v" if any(".conv_2.2." in k for k in state) else "cars_uncond"


def convert(src, dst, preset: Optional[str] = None, extra_stubs: Iterable[Tuple[str, str]] = ()) -> Path:
    """Read ``src`` (official ``.pth``), load it strictly into ``SSDNeRF`` of ``preset``, write ``dst``."""
    state = read_official(src, extra_stubs)
    preset = preset or guess_preset(state)
    with torch.device("meta"):
        model = SSDNeRF(SSDNeRF.preset_config(preset))
    load_state_dict_strict(model, state, what=f"official checkpoint {str(src)!r} (preset {preset!r})", device="cpu")
    return model.save_pretrained(dst)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastfields.models.ssdnerf.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="official checkpoint (.pth)")
    parser.add_argument("dst", help="output: a .safetensors file or a folder")
    parser.add_argument("--preset", choices=sorted(SSDNeRF.presets), help="default: from the layout")
    parser.add_argument("--stub", action="append", default=[], metavar="MODULE.NAME",
                        help="also read this pickled class as a plain dict (repeatable)")
    args = parser.parse_args(argv)
    stubs = [tuple(s.rsplit(".", 1)) for s in args.stub]
    out = convert(args.src, args.dst, args.preset, stubs)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
