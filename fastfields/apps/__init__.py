"""The model jobs behind ``fastfields <model> ...``: one module per model, each with
``add_parser(commands)`` (argparse sub-parser; keep imports inside the job function so
``fastfields --help`` stays light) that sets ``run`` to the job."""

import importlib

APPS = ("dataset", "lrm", "lrm_train", "zerorf")


def register(commands) -> None:
    for name in APPS:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
