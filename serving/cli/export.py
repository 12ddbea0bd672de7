"""``cascade export-serve-config``: write the Ray Serve config file (or a KubeRay RayService) from a
serving config, or check that a written one is current. Loads neither Ray Serve nor torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.config import ConfigError


def run(args: argparse.Namespace) -> int:
    import shlex

    from serving.config import load_config
    from serving.serve_config import kuberay_options, rayservice, render, serve_config

    if args.set and not args.kuberay:
        raise ConfigError("--set sets KubeRay options: it needs --kuberay")
    if args.check and not args.out:
        raise ConfigError("--check compares with the --out file: give --out")
    config = load_config(args.config)
    document = rayservice(config, kuberay_options(args.set)) if args.kuberay else serve_config(config)
    flags = ["--kuberay"] * args.kuberay + (["--config", str(args.config)] if args.config else [])
    flags += [flag for assignment in args.set for flag in ("--set", assignment)]
    flags += ["--out", str(args.out)] if args.out else []
    regenerate = shlex.join(["cascade", "export-serve-config", *flags])
    text = render(document, regenerate, None if args.kuberay else config.proxy.ray_env())
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is stale: regenerate it with `{regenerate}`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
    elif args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def add_parser(sub) -> None:
    """The ``export-serve-config`` subcommand's arguments."""
    p = sub.add_parser("export-serve-config", help="write the Ray Serve config file (or a KubeRay RayService) from a serving config", description="Generate deploy/serve.yaml for `serve run` / `serve deploy`, or with --kuberay a RayService manifest embedding it, from the same serving config `cascade serve --config` takes. The file's first line names the command that regenerates it.")
    p.add_argument("--config", type=Path, default=None, help="YAML/JSON file validated as serving.config.CascadeConfig (default: all defaults)")
    p.add_argument("--out", type=Path, default=None, help="file to write (default: print)")
    p.add_argument("--kuberay", action="store_true", help="write a KubeRay RayService (ray.io/v1) instead of the Serve config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --kuberay: a serving.serve_config.KubeRayOptions field, e.g. image=registry/distill-cascade:1 (repeatable)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from what would be written")
    p.set_defaults(func=run)
