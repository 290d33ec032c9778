"""``unmemorize collect``: K-FAC factors A and G of the target modules on a corpus (``curvature/``)."""

from __future__ import annotations

import argparse

from ..errors import UnmemorizeError
from .options import add_config_options, add_model_options, add_target_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize collect``."""
    from ..curvature.collect import CollectConfig

    collect = subparsers.add_parser("collect", help="Collect K-FAC factors A and G for target modules.",
                                    description="Collect K-FAC factors (A = E[a a^T], G = E[g g^T]) for the target modules "
                                    "on a text or pre-tokenized data set (a language model) or on images (an image classifier "
                                    "such as a ViT) and write a factor folder.")
    add_model_options(collect)
    collect.add_argument("--data", help=".txt (a document per line), .jsonl[.gz|.zst] ('text' or 'input_ids'), "
                         ".parquet, a datasets folder (save_to_disk), or a folder of them (language models).")
    collect.add_argument("--images", help="Instead of --data, for an image classifier (ViT): a folder of class subfolders, a "
                         "datasets folder or a .parquet file with an image column (read through the model's own image processor), "
                         "or a .safetensors file of 'pixel_values'.")
    collect.add_argument("--image-positions", choices=("cls", "all"), default="cls",
                         help="With --images: count the CLS token only (the paper's choice for ViTs) or every token.")
    collect.add_argument("--max-images", type=int, help="With --images: use at most this many (default: all).")
    collect.add_argument("--out", required=True, help="Factor folder to write (factors.json + factors.safetensors).")
    collect.add_argument("--overwrite", action="store_true", help="Replace an existing output folder (only one unmemorize wrote).")
    collect.add_argument("--resume", action="store_true", help="Continue an interrupted collection of --out from its checkpoint "
                         "(.<out>.checkpoint); a checkpoint made with other settings is refused.")
    collect.add_argument("--device-map", help="Load a model larger than one device with accelerate's dispatch, e.g. 'auto' "
                         "(layers over the visible GPUs, then the CPU); not with torchrun.")
    collect.add_argument("--max-memory", metavar="DEVICE=SIZE,...", help="With --device-map: the most accelerate may place on each "
                         "device, e.g. '0=60GiB,1=60GiB,cpu=200GiB' (leave room on the GPUs for the factor accumulators).")
    collect.add_argument("--dry-run", action="store_true", help="Print the plan (factor bytes, peak memory per device, disk, time "
                         "from a short measured warm-up) and write nothing.")
    collect.add_argument("--process-group-timeout", type=float, default=3600.0, metavar="SECONDS",
                         help="Under torchrun: how long a rank waits at a collective (e.g. while rank 0 writes a checkpoint) "
                         "before the run fails (default: 3600; NCCL's own default is 600).")
    add_target_options(collect)
    add_config_options(collect, CollectConfig)
    return collect


def run(args) -> None:
    """Check the options and the data paths, then plan (--dry-run) or run the collection job."""
    from ..curvature import CollectConfig
    from ..curvature.job import CollectJob, run_collect_job
    from ..data import list_data_files

    from ..models import parse_max_memory

    config = config_from_args(CollectConfig, args)
    config.validate()
    if bool(args.data) == bool(args.images):
        raise UnmemorizeError("give --data (text, for a language model) or --images (for an image classifier), exactly one")
    if args.max_images is not None and (args.max_images < 1 or not args.images):
        raise UnmemorizeError("--max-images must be a positive number, with --images")
    if args.data:
        list_data_files(args.data)
    elif args.dry_run:
        raise UnmemorizeError("--dry-run measures text windows; with --images, run a short collection (--max-images) instead")
    max_memory = parse_max_memory(args.max_memory)
    if max_memory and not args.device_map:
        raise UnmemorizeError("--max-memory limits what --device-map places on each device; give --device-map auto with it")
    job = CollectJob(model=args.model, data=args.data, out=args.out, config=config, model_dtype=args.model_dtype, device=args.device,
                     device_map=args.device_map, max_memory=max_memory, trust_remote_code=args.trust_remote_code, targets=args.targets, layers=args.layers,
                     projections=args.proj, overwrite=args.overwrite, resume=args.resume,
                     process_group_timeout=args.process_group_timeout, images=args.images, image_positions=args.image_positions,
                     max_images=args.max_images)
    if args.dry_run:
        from ..curvature.plan import print_collect_plan

        print_collect_plan(job)
        return
    meta = run_collect_job(job)
    if meta is not None:
        print(f"wrote {args.out}: {meta['modules']} modules, {meta['num_positions']} positions, {meta['tokens']} tokens, "
              f"{meta['seconds']:.1f} s")
