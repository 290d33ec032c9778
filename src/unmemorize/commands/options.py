"""Options several commands share: one ``--option`` per field of a stage's config dataclass, the
model options and the target options."""

from __future__ import annotations

import argparse
import dataclasses
import typing


def add_config_options(parser: argparse.ArgumentParser, config_cls, skip=()) -> None:
    """One ``--option`` per dataclass field, with its help text, type, choices and default."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        origin = typing.get_origin(hint)
        if origin is typing.Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(hint), default=f.default, help=help_text)
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kind = args[0] if args else hint
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)


def config_from_args(config_cls, args: argparse.Namespace):
    """The ``config_cls`` whose fields are read from ``args`` (fields the parser lacks keep their defaults)."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)})


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Local model folder or Hugging Face hub id.")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                        help="dtype the model is loaded in (default: float32).")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu).")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow the model's own Python code to run (off by default).")


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", action="append", metavar="GLOB",
                        help="Glob over matrix names (repeatable), e.g. 'model.layers.2?.mlp.*_proj', '*.experts.*.down_proj', "
                        "or a fused module / experts parameter ('*.gate_up_proj': both halves / every expert).")
    parser.add_argument("--layers", help="Block indices for the preset (derived from the model's structure), e.g. '23,24,25' or '0-3'.")
    parser.add_argument("--proj", help="Projections for the preset: roles 'gate,up,down' (any family, experts included; 'fc,proj' "
                        "= 'up,down'), a matrix's own name ('fc1', 'c_fc'), attention 'q,k,v,o' or 'qkv'. Default: every MLP matrix "
                        "but routers.")
