"""Real shapes on one GPU, in one prepared call: the engine with fla kernels, verification, cycles, the AR baseline.

    python3 bench/gpu_check.py install .gpuwheels --site /tmp/site          # device call 1, carrying .gpuwheels
    python3 bench/gpu_check.py install .gpuwheels-z3 --site /tmp/site-z3 && \\
        PYTHONPATH=/tmp/site:/tmp/site-z3 python3 bench/gpu_check.py run --out $OUT   # call 2, within 30 s of 1
    python bench/gpu_check.py run --tiny --out /tmp/check                   # the same code on the CPU (CI)

``../shared/gpu/fetch_wheels.sh`` downloads the two wheel folders (each under the 64 MiB a device call carries;
tilelang, with z3-solver, runs fla's gated-delta backward on Hopper). ``run`` measures, each part in its own
process under its own wall-clock budget (killed with its process group past it), and rewrites
``gpu_check.{json,md}`` after every part, so a part that overruns or fails loses nothing measured before it:

1. ``bare``: the 3.84 B DiT (the verifier's strided 12 layers + adaLN) forward + backward on a 32 × 128 batch
   without the engine, with and without activation checkpointing; a bf16 matmul's FLOP/s and a device copy's
   bandwidth: the MFU and the engine's overhead below are ratios to these, measured in the same run.
2. ``inference`` (``bench/suite.py``): prefill; verification of 32 × 128 after a 512-token prefix; draft, verify
   and advance, so one cycle, at (N, K) in {1, 4, 32} × {16, 128}; the AR baseline (static cache + CUDA graph,
   HF ``generate``) in ms/token at prefix 512; break-even τ per (N, K).
3. ``stage_a_ckpt`` / ``stage_a_nockpt`` (``bench/train_step.py``): Stage A steps through the project's DeepSpeed
   engine (``single_gpu_bf16.json``, batch 32), with and without activation checkpointing.
4. ``stage_c``: Stage C steps, the prefix-state path, batch 8, prefix 256.

Every part records its peak device memory (and the process's peak RSS) and which gated-delta kernels ran: fla's,
or transformers' torch fallback (the warnings it logs). The whole run is sized for about 7 minutes on one H200.
``--tiny`` runs every part at the quickstart's shapes on the CPU (fp32), to prove the code, not to time it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the device machine runs from the working tree, without an install

PARTS = {  # name: wall-clock budget in seconds on the GPU (the order they run in)
    "bare": 70,
    "inference": 110,
    "stage_a_ckpt": 80,
    "stage_c": 80,
    "stage_a_nockpt": 70,
}
TINY_BUDGET = 300  # per part on the CPU


def install(folder: Path, site: Path) -> None:
    """pip-install every wheel (and source archive) of ``folder`` into ``site``, offline and without deps."""
    wheels, sdists = sorted(folder.glob("*.whl")), sorted(folder.glob("*.tar.gz"))
    if not wheels and not sdists:
        raise SystemExit(f"{folder}: no *.whl or *.tar.gz to install (../shared/gpu/fetch_wheels.sh downloads them)")
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site)]
    t0 = time.time()
    if wheels:
        subprocess.run(pip + ["--no-compile"] + [str(w) for w in wheels], check=True, env=env)
    for sdist in sdists:  # DeepSpeed ships as source; its ops are built just in time, not here
        subprocess.run(pip + ["--no-build-isolation", str(sdist)], check=True, env=env)
    print(f"installed {len(wheels)} wheels and {len(sdists)} source archives into {site} in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------------------------- the parts


class KernelLog(logging.Handler):
    """Collects transformers' 'falling back to its reference PyTorch implementation' warnings."""

    def __init__(self):
        super().__init__()
        self.fallbacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "falling back" in message:
            self.fallbacks.append(message.split("`")[1] if message.count("`") >= 2 else message)


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "deepspeed", "flash-linear-attention", "tilelang", "triton"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_rates(tiny: bool, device, dtype) -> dict:
    """A square matmul's FLOP/s in the training dtype and a device copy's bandwidth (bytes read + written)."""
    import torch

    from suite import timer

    n, words = (512, 16 * 2**20) if tiny else (8192, 1024 * 2**20)  # a 64 MiB / 4 GiB fp32 buffer
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    time_it = timer(device, 2, 10)
    matmul_s = time_it(lambda: a @ b)
    src = torch.empty(words, device=device)
    dst = torch.empty_like(src)
    copy_s = time_it(lambda: dst.copy_(src))
    return {"matmul": {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflop_s": 2 * n**3 / matmul_s / 1e12},
            "copy_gb_s": 2 * words * 4 / copy_s / 1e9}


def dit_step(verifier, layers: int, block: int, batch: int, checkpointing: bool, reps: int) -> dict:
    """Median forward + backward of the grafted DiT on a random batch (no optimizer, no engine)."""
    import torch

    from suite import timer

    from clsd_ds.dit import DiTConfig
    from clsd_ds.graft import graft
    from clsd_ds.train.stage_a import block_flops_per_token

    dit = graft(verifier, DiTConfig(num_layers=layers, block_len=block, checkpointing=checkpointing)).train()
    p = next(dit.parameters())
    hidden = verifier.lm.config.hidden_size
    x, c = (torch.randn(batch, *shape, device=p.device, dtype=p.dtype) for shape in ((block, hidden), (hidden,)))
    t = torch.rand(batch, device=p.device)
    seconds = timer(p.device, 2, reps)(lambda: dit(x, t, c).float().pow(2).mean().backward())
    flops = block_flops_per_token(dit, block) * batch * block
    return {"batch": batch, "block_len": block, "dit_params": sum(q.numel() for q in dit.parameters()),
            "step_s": seconds, "block_tok_s": batch * block / seconds, "tflop_s": flops / seconds / 1e12}


def part_bare(tiny: bool) -> dict:
    """The DiT's forward + backward without the engine, next to the device's matmul and copy rates."""
    import torch

    from clsd_ds.tiny import MINI
    from clsd_ds.verifier import Verifier, VerifierConfig

    device, dtype = (torch.device("cpu"), torch.float32) if tiny else (torch.device("cuda"), torch.bfloat16)
    arch, layers, block, batch = ({**MINI, "vocab_size": 512}, 4, 32, 4) if tiny else ({}, 12, 128, 32)
    result = device_rates(tiny, device, dtype)
    verifier = Verifier.load(VerifierConfig(random_init=arch), dtype=dtype, device=device)
    embedding = verifier.lm.get_input_embeddings().weight  # a decoded token reads one row of it, every other weight
    result["decode_bytes"] = sum(p.numel() * p.element_size() for p in verifier.lm.parameters()
                                 if p is not embedding or verifier.lm.config.tie_word_embeddings)
    for checkpointing in (False, True):
        row = dit_step(verifier, layers, block, batch, checkpointing, 2 if tiny else 5)
        row["mfu_vs_matmul"] = row["tflop_s"] / result["matmul"]["tflop_s"]
        result["ckpt" if checkpointing else "nockpt"] = row
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def part_inference(tiny: bool) -> dict:
    import torch

    from suite import run_suite

    if tiny:
        return run_suite("tiny", 0, 1, torch.device("cpu"), grid={"N": (1, 4), "K": (8, 32), "steps": (1,)})
    return run_suite("9b", 2, 5, torch.device("cuda"), grid={"N": (1, 4, 32), "K": (16, 128), "steps": (1,)})


def train_argv(tiny: bool, stage: str, checkpointing: bool) -> list[str]:
    if tiny:
        argv = ["--shape", "tiny", "--ds-config", "ds_configs/cpu_zero1.json", "--steps", "4", "--log-every", "2",
                "--batch", "4"]
    else:
        argv = ["--shape", "9b", "--ds-config", "ds_configs/single_gpu_bf16.json", "--steps", "10",
                "--log-every", "2", "--batch", "32" if stage == "a" else "8"]
    if stage == "c":
        argv += ["--prefix-path", "state"] + ([] if tiny else ["--prefix-len", "256"])
    argv += ["--stage", stage]
    return argv + ([] if checkpointing else ["--no-checkpointing"])


def part_train(tiny: bool, stage: str, checkpointing: bool) -> dict:
    import train_step

    return train_step.main(train_argv(tiny, stage, checkpointing))


PART_FNS = {
    "bare": part_bare,
    "inference": part_inference,
    "stage_a_ckpt": lambda tiny: part_train(tiny, "a", True),
    "stage_a_nockpt": lambda tiny: part_train(tiny, "a", False),
    "stage_c": lambda tiny: part_train(tiny, "c", True),
}


def run_part(name: str, tiny: bool, out: Path) -> None:
    """One part, in this process: its result, versions, kernels and peak memory to ``out/parts/<name>.json``."""
    import torch
    import transformers

    log = KernelLog()
    transformers.utils.logging.get_logger("transformers").addHandler(log)
    result = PART_FNS[name](tiny)
    record = {"result": result, "versions": versions(), "gated_delta_fallbacks": sorted(set(log.fallbacks)),
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        record["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        record["device"] = torch.cuda.get_device_name()
    (out / "parts").mkdir(parents=True, exist_ok=True)
    (out / "parts" / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))


# ----------------------------------------------------------------------------------------------- the run


def run_all(out: Path, tiny: bool, only: list[str] | None, budget: float | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": str(date.today()), "tiny": tiny, "parts": {}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    if tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    for name, own in PARTS.items():
        if only and name not in only:
            continue
        seconds = budget or (TINY_BUDGET if tiny else own)
        t0 = time.time()
        with open(out / f"{name}.log", "w") as log:
            proc = subprocess.Popen([sys.executable, __file__, "part", name, "--out", str(out)] + (["--tiny"] * tiny),
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                status = "ok" if proc.wait(timeout=seconds) == 0 else f"failed (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = "timeout"
        entry = {"status": status, "budget_s": seconds, "wall_s": round(time.time() - t0, 1)}
        part_file = out / "parts" / f"{name}.json"
        if status == "ok" and part_file.is_file():
            entry.update(json.loads(part_file.read_text()))
        else:
            entry["log_tail"] = (out / f"{name}.log").read_text()[-2000:]
        report["parts"][name] = entry
        report["device"] = next((p["device"] for p in report["parts"].values() if "device" in p), "cpu")
        report["targets"] = targets(report)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(report))
        print(f"[gpu_check] {name}: {status} in {entry['wall_s']} s", flush=True)
    return report


def targets(report: dict) -> list[dict]:
    """Issue 17's targets, each with the measured value and whether it is met (None: not measured)."""
    parts = {k: v.get("result") for k, v in report["parts"].items() if v["status"] == "ok"}
    rows = []

    def row(what: str, value, limit: float, higher: bool, unit: str) -> None:
        met = None if value is None else (value >= limit if higher else value <= limit)
        rows.append({"target": what, "value": value, "limit": limit, "unit": unit, "met": met})

    for name in ("stage_a_ckpt", "stage_a_nockpt"):
        row(f"Stage A through the engine ({name})", (parts.get(name) or {}).get("block_tok_s"), 19000, True,
            "block tok/s")
    stage_c = parts.get("stage_c") or {}
    row(f"Stage C ({stage_c.get('prefix_path')}, b{stage_c.get('batch')}, prefix {stage_c.get('prefix_len')})",
        stage_c.get("block_tok_s"), 3300, True, "block tok/s")
    inference = parts.get("inference") or {}
    verify = inference.get("verify_paths") or {}
    row(f"verification {verify.get('N')} × {verify.get('K')} after the prefix", verify.get("shared_state_ms"), 150,
        False, "ms")
    for c in inference.get("cycles", []):
        row(f"cycle N {c['N']} K {c['K']} ({c['euler_steps']} Euler step)", c["cycle_ms"], 250, False, "ms")
    bare = parts.get("bare") or {}
    if inference.get("ar") and bare:
        floor_ms = 1000 * bare["decode_bytes"] / (bare["copy_gb_s"] * 1e9)  # each weight read once per token
        ar_ms = inference["ar"]["static"]["ms_per_token"]
        row(f"AR baseline (static cache) / HBM floor {floor_ms:.2f} ms", ar_ms / floor_ms, 2, False, "×")
    return rows


def markdown(report: dict) -> str:
    lines = [f"Device: {report.get('device')} ({report['date']}{', tiny shapes' if report['tiny'] else ''}).", "",
             "| part | status | wall s | peak device GiB | peak RSS GiB | gated-delta fallbacks |",
             "|---|---|---|---|---|---|"]
    for name, p in report["parts"].items():
        mem = f"{p['peak_mem_gib']:.1f}" if "peak_mem_gib" in p else "—"
        rss = f"{p['peak_rss_gib']:.1f}" if "peak_rss_gib" in p else "—"
        lines.append(f"| {name} | {p['status']} | {p['wall_s']} | {mem} | {rss} | "
                     f"{', '.join(p.get('gated_delta_fallbacks', [])) or 'none'} |")
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        value = "—" if t["value"] is None else f"{t['value']:.2f} {t['unit']}"
        lines.append(f"| {t['target']} | {value} | {t['limit']} | {'—' if t['met'] is None else t['met']} |")
    bare = (report["parts"].get("bare") or {}).get("result")
    engine = (report["parts"].get("stage_a_ckpt") or {}).get("result")
    if bare and engine:
        ratio = engine["block_tok_s"] / bare["ckpt"]["block_tok_s"]
        lines.append(f"\nThe engine's Stage A with checkpointing runs at {ratio:.2f} × the bare forward + backward's "
                     f"tokens/s; the bare DiT reaches {bare['ckpt']['mfu_vs_matmul']:.2f} (checkpointing) / "
                     f"{bare['nockpt']['mfu_vs_matmul']:.2f} of the measured matmul FLOP/s.")
    cycles = ((report["parts"].get("inference") or {}).get("result") or {}).get("cycles", [])
    if cycles:
        lines += ["", "| N | K | draft ms | verify ms | advance ms | cycle ms | break-even τ |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['N']} | {c['K']} | {c['draft_ms']:.1f} | {c['verify_ms']:.1f} | {c['advance_ms']:.1f} | "
                  f"{c['cycle_ms']:.1f} | {c['break_even_tau']:.2f} |" for c in cycles]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install carried wheels into a target folder")
    inst.add_argument("folder", type=Path)
    inst.add_argument("--site", type=Path, required=True)
    run = sub.add_parser("run", help="every part, each in its own process under its budget")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--tiny", action="store_true", help="the quickstart's shapes on the CPU")
    run.add_argument("--only", nargs="*", choices=sorted(PARTS), help="run only these parts")
    run.add_argument("--budget", type=float, default=None, help="seconds per part, instead of each part's own")
    part = sub.add_parser("part", help="one part in this process (what `run` starts)")
    part.add_argument("name", choices=sorted(PARTS))
    part.add_argument("--out", type=Path, required=True)
    part.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.command == "install":
        install(args.folder, args.site)
    elif args.command == "run":
        print(markdown(run_all(args.out, args.tiny, args.only, args.budget)))
    else:
        run_part(args.name, args.tiny, args.out)


if __name__ == "__main__":
    main()
