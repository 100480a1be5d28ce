"""``fastfields dataset build``: render a multi-object posed-view dataset in the SRN layout.

    fastfields dataset build --out srn-procedural                      # chairs + cars, 8 each, 50 views
    fastfields dataset build --out data --categories chair car table --objects 32 --views 24 --resolution 64

Procedural shapes (fastfields.datasets.CATEGORIES) plus the shipped meshes, SRN cameras
(f = 131.25 px at 128 px, distance 1.3, OpenCV convention, z up); see fastfields.datasets.build.
Read it back with fastfields.datasets.SRNDataset(out, split="train").
"""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser("dataset", help="build multi-object posed-view datasets (SRN layout)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset_command", metavar="{build}", required=True)
    build = sub.add_parser("build", help="render procedural objects and the shipped meshes into an SRN-layout folder")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--categories", nargs="+", default=["chair", "car"], help="procedural categories (default: chair car)")
    build.add_argument("--objects", type=int, default=8, help="objects per category (default 8)")
    build.add_argument("--views", type=int, default=50, help="views per object (default 50)")
    build.add_argument("--resolution", type=int, default=128, help="image side in pixels (default 128)")
    build.add_argument("--seed", type=int, default=0, help="default 0")
    build.add_argument("--distance", type=float, default=1.3, help="camera distance (default 1.3, SRN cars)")
    build.add_argument("--train-fraction", type=float, default=0.75, help="fraction of each category in train/, the rest in test/ (default 0.75)")
    build.add_argument("--elevation", type=float, nargs=2, default=(0.0, 90.0), metavar=("LOW", "HIGH"),
                       help="camera elevation range in degrees (default 0 90: the upper hemisphere)")
    build.add_argument("--supersample", type=int, default=2, help="anti-aliasing samples per pixel side (default 2)")
    build.add_argument("--no-meshes", action="store_true", help="leave out the shipped meshes (spot, avocado)")
    build.add_argument("--overwrite", action="store_true", help="rebuild into a folder that has a dataset.json")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(run=run)


def run(args) -> int:
    import time

    from ..datasets import build_dataset

    if not 0.0 <= args.train_fraction <= 1.0:
        raise SystemExit(f"fastfields dataset build: --train-fraction must be in [0, 1], got {args.train_fraction}")
    start = time.perf_counter()
    out = build_dataset(
        args.out, categories=tuple(args.categories), objects_per_category=args.objects, views=args.views,
        resolution=args.resolution, seed=args.seed, include_meshes=not args.no_meshes, camera_distance=args.distance,
        split={"train": args.train_fraction, "test": 1.0 - args.train_fraction}, elevation_range=tuple(args.elevation),
        supersample=args.supersample, overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s (read it with fastfields.datasets.SRNDataset({str(out)!r}, split='train'))")
    return 0
