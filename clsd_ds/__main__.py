"""Command line: ``clsd-ds <command> [--config FILE] [KEY=VALUE ...]`` (the same as ``python -m clsd_ds``).

    quickstart     the whole pipeline on a tiny verifier, on this CPU, nothing downloaded
    doctor         versions, devices, and which fast paths (kernels, ops, launchers) will actually be used here
    report         a run directory's summary and plots (loss, throughput, restarts)
    prepare-data   text -> token-id shards (optionally with C precomputed by the verifier)
    import-seed    the seed's [N, 128, 4096] embedding safetensors -> shards
    distill        shards whose blocks are the verifier's own continuations of their prefixes (data-parallel)
    eval           speculative decoding of held-out prompts: τ, time split, speedup over the verifier alone
    generate       decode one prompt (--prompt TEXT) with the drafter and print the text and τ
    shadow-tasks   write the shadow loop's task set (arithmetic problems or Python functions, held-out split)
    shadow-primary the shadow loop's primary: draft, verify objectively, send trajectories to Redis (the trainer
                   is ``train stage=shadow``); SIGTERM/SIGINT: finish the task in hand, send what is queued, exit
    train          a training run of one stage (below); launch it with deepspeed, torchrun, mpirun or srun, or
                   plainly for one process. Exits with 75 when a stop signal (SIGUSR1/SIGTERM) made it
                   checkpoint and stop early: requeue it.

KEY=VALUE pairs override the config file (dotted paths, YAML values), e.g. ``optim.lr=3e-4 train.steps=100``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

from . import doctor
from .config import ConfigError, load_config
from .train.preemption import EXIT_REQUEUE
from .train.stages import STAGES, stage_help


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clsd-ds", description=__doc__ + "\nStages of train:\n" + stage_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # `deepspeed` passes it first
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in [("prepare-data", "tokenize text into shards"),
                       ("import-seed", "convert the seed's embedding safetensors into shards"),
                       ("distill", "rewrite shards' blocks as the verifier's own continuations"),
                       ("train", "run a training stage"),
                       ("eval", "measure speculative decoding on held-out prompts"),
                       ("generate", "decode one prompt with the drafter"),
                       ("shadow-tasks", "write the shadow loop's task set"),
                       ("shadow-primary", "run the shadow loop's primary")]:
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", help="YAML or JSON config file")
        s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sub.choices["train"].add_argument("--stage", choices=list(STAGES), help="same as the override stage=...: "
                                      + "; ".join(f"{s.name}: {s.summary}" for s in STAGES.values()))
    sub.choices["train"].add_argument("--init-from", help="same as the override init_from=...")
    sub.choices["generate"].add_argument("--prompt", required=True, help="the text to continue")
    r = sub.add_parser("report", help="summarize a run directory and write loss/throughput PNGs")
    r.add_argument("run_dir")
    r.add_argument("--out", help="where the PNGs go (default: the run directory)")
    doctor.add_arguments(sub.add_parser("doctor", help="versions, devices and the fast paths that will be used here"))
    q = sub.add_parser("quickstart", help="run the embedded default end to end on the CPU")
    q.add_argument("--config", help="YAML or JSON file overriding the quickstart's settings")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # DeepSpeed 0.19 calls torch.distributed APIs that torch 2.13 deprecates, once per collective.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    try:
        if args.command == "prepare-data":
            from .data.writer import PrepareConfig, prepare_data

            print(json.dumps(prepare_data(load_config(PrepareConfig, args.config, args.overrides)), indent=1))
        elif args.command == "import-seed":
            from .data.seed_import import ImportConfig, import_seed

            print(json.dumps(import_seed(load_config(ImportConfig, args.config, args.overrides)), indent=1))
        elif args.command == "distill":
            from .data.distill import DistillConfig, distill

            summary = distill(load_config(DistillConfig, args.config, args.overrides))
            if torch.distributed.get_rank() == 0:
                print(json.dumps(summary, indent=1), flush=True)
        elif args.command == "train":
            from .train.run import RunConfig, run

            overrides = args.overrides + ([f"stage={args.stage}"] if args.stage else []) + \
                ([f"init_from={args.init_from}"] if args.init_from else [])
            summary = run(load_config(RunConfig, args.config, overrides))
            if torch.distributed.get_rank() == 0:
                print(json.dumps(summary, indent=1), flush=True)
            if summary["exit"] == "requeue":
                return EXIT_REQUEUE
        elif args.command == "eval":
            from .infer.evaluate import EvalConfig, evaluate

            result = evaluate(load_config(EvalConfig, args.config, args.overrides))
            print(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}, indent=1))
        elif args.command == "generate":
            from .infer.generate import GenerateConfig, generate

            print(json.dumps(generate(load_config(GenerateConfig, args.config, args.overrides), args.prompt), indent=1))
        elif args.command == "shadow-tasks":
            from .shadow.tasks import TasksConfig, write_task_set

            print(json.dumps(write_task_set(load_config(TasksConfig, args.config, args.overrides)), indent=1))
        elif args.command == "shadow-primary":
            import signal

            from .shadow.primary import Primary, PrimaryConfig

            primary = Primary(load_config(PrimaryConfig, args.config, args.overrides))
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: primary.request_stop())
            print(json.dumps(primary.run(), indent=1), flush=True)
        elif args.command == "report":
            from pathlib import Path

            from .report import plot, summary

            print(summary(Path(args.run_dir)))
            for path in plot(Path(args.run_dir), Path(args.out) if args.out else None):
                print(f"  wrote {path}")
        elif args.command == "doctor":
            return doctor.main(args)
        elif args.command == "quickstart":
            from .quickstart import QuickstartConfig, quickstart

            quickstart(load_config(QuickstartConfig, args.config, args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
