"""``clsd-ds doctor``: which fast paths this machine will actually use, and what a config needs that is missing.

Every answer comes from importing the real thing (and, where cheap, running it), never from package names alone.
Nothing here builds an op, opens a network connection or starts a process group; apart from imports the report
takes well under a second on a CPU (on a GPU, fla's first call also compiles its Triton kernels).

The report (``report(cfg)``, printed as JSON by ``--json``) holds:

    versions     Python, torch (+ its CUDA and cuDNN), deepspeed, transformers, fla, triton, tilelang, causal-conv1d,
                 mpi4py (+ the MPI library, read in a subprocess that does not initialise MPI), webdataset, wandb,
                 safetensors, numpy, clsd-ds: ``importlib.metadata`` versions, None when not installed.
    devices      CUDA available, device count, each GPU's name, compute capability and memory; the CPU's cores.
    fast_paths   ``{"name", "used", "why", "detail"}`` per path; ``used`` says whether it is taken here:
                 - Gated DeltaNet kernels: transformers 5.23 binds, once at import of modeling_qwen3_5, the name
                   ``torch_chunk_gated_delta_rule`` that ``Qwen3_5GatedDeltaNet.forward`` calls to a wrapper around
                   fla's ``chunk_gated_delta_rule`` if ``fla.ops.gated_delta_rule`` imports, else around its own
                   torch code (``use_kernel_func_from_hub_with_fallback``). The doctor reads that binding from the
                   wrapper's closure and says why fla is not bound (transformers only ever says "not installed").
                   When fla is bound, its forward and backward run on tiny tensors (``probe_chunk_rule``); the known
                   Hopper failure of fla 0.6.0's backward (Triton >= 3.4, < 3.7.1, no TileLang) gets its remedy.
                 - causal-conv1d: the same binding, for ``causal_conv1d_fn``.
                 - DeepSpeed CPUAdam (ZeRO optimizer offload) and FusedAdam (``optim.backend=deepspeed``): prebuilt
                   in the wheel, JIT-built already (torch's extension cache), or buildable (DeepSpeed's
                   ``is_compatible``, a C++ compiler, ninja on PATH; on CUDA nvcc matching torch's CUDA and a
                   usable TORCH_CUDA_ARCH_LIST). Used only by a config that needs them.
                 - torch's fused AdamW (the trainer passes ``fused=True`` on CUDA), native bf16, and the
                   distributed backends: NCCL / gloo (DeepSpeed's accelerator picks one), MPI (mpi4py + mpirun).
    environment  the launcher variables seen (SLURM_*, RANK/WORLD_SIZE/..., OMPI_*/PMI_*, CUDA_VISIBLE_DEVICES,
                 OMP_NUM_THREADS, WANDB_MODE, ...) and the launcher ``clsd_ds.train.distributed`` would detect.
    config       None, or what the given trainer config asks for (DeepSpeed JSON, precision, ZeRO stage, offload,
                 optimizer).
    verdicts     ``{"level": "ok" | "warn" | "error", "message"}``, one per finding, saying what to do.

Exit codes (``exit_code``): 1 when a verdict is an error, else 0; ``main`` returns 2 for a config that fails to
load. Without a config the errors are: a package clsd-ds needs does not import, or the Gated DeltaNet kernel
transformers bound fails here (training would crash). With a config, whatever it needs and cannot have is an error:
its DeepSpeed JSON, an offloading config's CPUAdam, wandb for ``log.wandb``, the verifier checkpoint, the shards.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .train.run import RunConfig

REQUIRED_IMPORTS = {"torch": "torch", "deepspeed": "deepspeed", "transformers": "transformers",
                    "webdataset": "webdataset"}  # module -> distribution
DISTRIBUTIONS = ("torch", "deepspeed", "transformers", "flash-linear-attention", "fla-core", "triton", "tilelang",
                 "causal-conv1d", "mpi4py", "mpich", "webdataset", "wandb", "safetensors", "numpy", "clsd-ds")
ENV_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_ID", "SLURM_JOB_NODELIST",
            "SLURM_STEP_NODELIST", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
            "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE",
            "PMIX_RANK", "MPI_LOCALNRANKS", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "WANDB_MODE",
            "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "TORCH_EXTENSIONS_DIR")
LAUNCHERS = {"env": "deepspeed/torchrun (env://)", "slurm": "srun (SLURM_*)", "mpi": "mpirun (mpi4py discovery)",
             "single": "none: a single process"}
GPU_INSTALL = "install flash-linear-attention + triton (on Hopper with Triton < 3.7.1 also tilelang + z3-solver)"
CPU_CONFIGS = "ds_configs/cpu_zero1.json or ds_configs/cpu_zero3.json (fp32)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--config", help="a trainer config (YAML or JSON) whose needs are checked too")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the trainer config")


def main(args: argparse.Namespace) -> int:
    cfg = None
    if args.config or args.overrides:
        from .config import ConfigError, load_config
        from .train.run import RunConfig

        try:
            cfg = load_config(RunConfig, args.config, args.overrides)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    with _stdout_to_stderr():  # DeepSpeed logs to stdout; keep stdout for the report alone
        rep = report(cfg)
    print(json.dumps(rep, indent=1) if args.json else format_report(rep), flush=True)
    return exit_code(rep)


def exit_code(rep: dict) -> int:
    return 1 if any(v["level"] == "error" for v in rep["verdicts"]) else 0


@dataclass
class _Facts:
    """What the fast-path checks read, and the verdicts they add."""

    versions: dict
    devices: dict
    launcher: str
    plan: dict | None  # what the config's DeepSpeed JSON asks for; None without a (usable) config
    verdicts: list[dict]

    @property
    def cuda(self) -> bool:
        return self.devices["cuda_available"]

    def add(self, level: str, message: str) -> None:
        self.verdicts.append(_verdict(level, message))


def report(cfg: RunConfig | None = None) -> dict:
    """The whole report (see the module docstring); ``cfg`` adds what that trainer config needs."""
    verdicts: list[dict] = []
    for module, dist in REQUIRED_IMPORTS.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken install raises more than ImportError
            verdicts.append(_verdict("error", f"clsd-ds needs {module}, which does not import ({_describe(exc)}): "
                                              f"pip install {dist}"))
    rep = {"versions": _versions(), "devices": {}, "fast_paths": [], "environment": {}, "config": None,
           "verdicts": verdicts}
    if "torch" not in sys.modules:  # nothing else can be checked (clsd_ds.train.distributed needs torch too)
        return rep
    rep["environment"] = _environment(verdicts)
    rep["devices"] = _devices()
    rep["config"] = _config_plan(cfg, verdicts) if cfg is not None else None
    facts = _Facts(rep["versions"], rep["devices"], rep["environment"]["launcher"], rep["config"], verdicts)
    for name, check in FAST_PATHS:
        try:
            used, why, detail = check(facts)
        except Exception as exc:  # a doctor reports what it could not find out instead of crashing
            used, why, detail = False, f"check failed: {_describe(exc)}", {}
            facts.add("warn", f"the doctor could not check {name}: {_describe(exc)}")
        rep["fast_paths"].append({"name": name, "used": used, "why": why, "detail": detail})
    if cfg is not None:
        verdicts.extend(_config_verdicts(cfg, rep["config"], rep["devices"]))
    return rep


def format_report(rep: dict) -> str:
    """The human form: versions, devices, one line per fast path, environment, verdicts."""
    def wrap(text: str) -> list[str]:
        return textwrap.wrap(text, 118, subsequent_indent="    ", break_on_hyphens=False, break_long_words=False)

    lines = wrap("versions: " + ", ".join(f"{k} {v if v is not None else 'none'}" for k, v in rep["versions"].items()))
    d = rep["devices"]
    if d:
        cpu = d["cpu"]
        gpus = "; ".join(f"cuda:{g['index']} {g['name']} (compute capability {g['capability']}, {g['memory_gib']} GiB)"
                         for g in d["gpus"])
        lines += wrap(f"devices: {gpus or 'no CUDA device'}; cpu: {cpu['cores']} cores ({cpu['usable_cores']} usable, "
                      f"torch threads {cpu['torch_threads']}, bf16 flags: {', '.join(cpu['bf16_flags']) or 'none'})")
    lines.append("fast paths:")
    for p in rep["fast_paths"]:
        lines += wrap(f"  [{'used' if p['used'] else 'not used'}] {p['name']}: {p['why']}")
    env = rep["environment"]
    if env:
        variables = " ".join(f"{k}={v}" for k, v in env["variables"].items()) or "no launcher variables set"
        lines += wrap(f"environment: launcher {env['launcher']} ({LAUNCHERS[env['launcher']]}); {variables}")
    if rep["config"] is not None:
        lines += wrap("config: " + ", ".join(f"{k} {v}" for k, v in rep["config"].items()))
    for verdict in rep["verdicts"]:
        lines += wrap(f"{verdict['level']}: {verdict['message']}")
    return "\n".join(lines)


# --- sections -------------------------------------------------------------------------------------------------------

def _versions() -> dict:
    """Installed versions (None: not installed), each build detail right after its package."""
    details = {"torch": _torch_builds, "fla-core": _fla_module, "mpi4py": _mpi_library}
    versions = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        versions[name] = _version(name)
        if name in details:
            versions.update(details[name](versions[name]))
    return versions


def _torch_builds(installed: str | None) -> dict:
    torch = sys.modules.get("torch")  # report() has imported it, unless it does not import
    if torch is None:
        return {"torch.version.cuda": None, "cudnn": None}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch.version.cuda": torch.version.cuda, "cudnn": cudnn}


def _fla_module(installed: str | None) -> dict:
    try:
        return {"fla module": importlib.import_module("fla").__version__ if installed else None}
    except Exception:  # installed, but broken
        return {"fla module": None}


def _mpi_library(installed: str | None) -> dict:
    """The MPI library's version line, read in a subprocess: importing mpi4py.MPI here could initialise MPI."""
    code = ("import mpi4py; mpi4py.rc.initialize = mpi4py.rc.finalize = False; from mpi4py import MPI; "
            "print(MPI.Get_library_version())")
    line = None
    if installed:
        try:
            out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
            first = out.stdout.strip().splitlines()[:1]
            line = " ".join(first[0].split()) if out.returncode == 0 and first else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {"MPI library": line}


def _devices() -> dict:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1)})
    cpu = {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
           "torch_threads": torch.get_num_threads(), "bf16_flags": _cpu_bf16_flags()}
    return {"cuda_available": bool(gpus), "count": len(gpus), "gpus": gpus, "cpu": cpu}


def _cpu_bf16_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags))


def _environment(verdicts: list[dict]) -> dict:
    from .train.distributed import MPI_MARKERS, detect_launcher

    env = os.environ
    names = ENV_VARS + tuple(m for m in MPI_MARKERS if m not in ENV_VARS)
    launcher = detect_launcher(env)
    if launcher == "single" and "SLURM_JOB_ID" in env:
        verdicts.append(_verdict("warn", f"inside SLURM job {env['SLURM_JOB_ID']} but not in an srun step "
                                         f"(SLURM_PROCID/SLURM_NTASKS/SLURM_STEP_ID not all set): a training run here "
                                         f"is one process; start it with srun"))
    return {"launcher": launcher, "variables": {k: env[k] for k in names if k in env}}


def _config_plan(cfg: RunConfig, verdicts: list[dict]) -> dict | None:
    """What the config's DeepSpeed JSON asks for, or None (with an error verdict) when it cannot be used."""
    import torch

    from .config import ConfigError
    from .train.ds_config import build_ds_config, compute_dtype, offloads_optimizer, read_ds_config
    from .train.run import check_ds_config

    try:
        ds = read_ds_config(cfg.train.ds_config)
        _, ds_optimizer = build_ds_config(cfg.train.ds_config, cfg.optim, cfg.train.batch_size,
                                          cfg.train.micro_batch_size or cfg.train.batch_size, 1)
    except ConfigError as exc:
        verdicts.append(_verdict("error", str(exc)))
        return None
    try:
        check_ds_config(cfg, ds)
    except ConfigError as exc:
        verdicts.append(_verdict("error", str(exc)))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute_dtype(ds), "fp32")
    return {"ds_config": cfg.train.ds_config, "precision": precision,
            "zero_stage": ds.get("zero_optimization", {}).get("stage", 0), "offload_optimizer": offloads_optimizer(ds),
            "optimizer": "deepspeed" if ds_optimizer else "torch"}


def _config_verdicts(cfg: RunConfig, plan: dict | None, devices: dict) -> list[dict]:
    from .config import ConfigError
    from .data.format import Manifest
    from .verifier import check_checkpoint_dir

    out = []
    if plan and plan["precision"] != "fp32" and not devices["cuda_available"]:
        out.append(_verdict("warn", f"{plan['ds_config']} trains in {plan['precision']} without a CUDA device: slow "
                                    f"on a CPU; use {CPU_CONFIGS}"))
    if cfg.log.wandb:
        try:
            importlib.import_module("wandb")
        except Exception as exc:
            out.append(_verdict("error", f"log.wandb is true, but wandb does not import ({_describe(exc)}): "
                                         f"pip install wandb, or set log.wandb=false"))
    if cfg.verifier.path is not None:
        try:
            check_checkpoint_dir(cfg.verifier.path)
        except ConfigError as exc:
            out.append(_verdict("error", str(exc)))
    for field, path in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if path:
            try:
                Manifest.read(path)
            except ConfigError as exc:
                out.append(_verdict("error", f"{field}: {exc}"))
    if cfg.init_from is not None and not Path(cfg.init_from).exists():
        out.append(_verdict("error", f"init_from: '{cfg.init_from}' does not exist"))
    return out


# --- fast paths: each check returns (used, why, detail) and adds its verdicts -------------------------------------

def _gated_deltanet(facts: _Facts) -> tuple[bool, str, dict]:
    from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

    chunk = vars(qwen)["torch_chunk_gated_delta_rule"]  # the name Qwen3_5GatedDeltaNet.forward calls
    impl = _bound(chunk)
    detail = {"chunk": _qualname(impl), "recurrent": _qualname(_bound(vars(qwen)["torch_recurrent_gated_delta_rule"]))}
    if impl is chunk.__wrapped__:
        fla = facts.versions["flash-linear-attention"] or facts.versions["fla-core"]
        reason = _fla_unbound_reason(fla, facts.cuda)
        note = " (its log line 'flash-linear-attention is not installed' means only that this import failed)" \
            if fla else ""
        if facts.cuda:
            facts.add("warn", f"Gated DeltaNet uses transformers' torch fallback on a GPU, much slower ({reason}): "
                              f"{GPU_INSTALL}")
        else:
            facts.add("ok", f"Gated DeltaNet uses transformers' torch fallback, as expected without a CUDA device; "
                            f"on a GPU {GPU_INSTALL}")
        return False, f"{reason}: transformers uses its torch fallback, torch_chunk_gated_delta_rule{note}", detail
    if not impl.__module__.startswith("fla."):
        facts.add("warn", f"transformers binds its Gated DeltaNet to {_qualname(impl)}, unknown to this doctor")
        return False, f"bound to {_qualname(impl)}", detail
    import torch

    device = torch.device("cuda" if facts.cuda else "cpu")
    detail["probe"] = probe = probe_chunk_rule(chunk, device)
    if probe["forward"] != "ok":
        remedy = GPU_INSTALL if facts.cuda else "uninstall triton, or run on a CUDA device"
        facts.add("error", f"transformers binds fla's Gated DeltaNet kernel, but it fails on {device.type} "
                           f"({probe['forward']}): every forward would raise; {remedy}")
    elif probe["backward"] != "ok":
        capability = facts.devices["gpus"][0]["capability"] if facts.cuda else None
        facts.add("error", f"fla's Gated DeltaNet backward fails ({probe['backward']}): training would crash; "
                           f"{_backward_remedy(capability, facts.versions)}")
    else:
        facts.add("ok", "Gated DeltaNet runs fla's kernels (forward and backward pass here)")
    used = probe["forward"] == "ok" and probe["backward"] == "ok"
    return used, f"fla's kernels on {device.type}: forward {probe['forward']}; backward {probe['backward']}", detail


def probe_chunk_rule(chunk_fn, device) -> dict:
    """Forward, then backward, of ``chunk_fn`` (called as Qwen3_5GatedDeltaNet calls it) on tiny random tensors.

    Returns ``{"forward": "ok" | problem, "backward": "ok" | problem | None}`` (None: not reached)."""
    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    gen = torch.Generator().manual_seed(0)
    batch, length, heads, v_heads, dim = 1, 64, 2, 4, 128  # Qwen3.5's head dim, few heads

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    q, k, v = (rand(batch, length, h, dim).requires_grad_() for h in (heads, heads, v_heads))
    g = F.logsigmoid(torch.randn(batch, length, v_heads, generator=gen)).to(device)  # log decay, fp32 as the layer's
    beta = rand(batch, length, v_heads).sigmoid()
    result = {"forward": None, "backward": None}
    try:
        out, _ = chunk_fn(q, k, v, g=g, beta=beta, initial_state=None, output_final_state=False,
                          use_qk_l2norm_in_kernel=True)
        _synchronize(device)
        result["forward"] = "ok" if torch.isfinite(out).all() else "non-finite output"
    except Exception as exc:
        result["forward"] = _describe(exc)
        return result
    try:
        out.float().square().mean().backward()
        _synchronize(device)
        finite = all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
        result["backward"] = "ok" if finite else "missing or non-finite gradients"
    except Exception as exc:
        result["backward"] = _describe(exc)
    return result


def _backward_remedy(capability: str | None, versions: dict) -> str:
    if capability and capability.startswith("9."):
        return (f"on Hopper fla {versions['fla module']}'s backward needs Triton >= 3.7.1 (here {versions['triton']}) "
                f"or TileLang: install tilelang (+ z3-solver), with nvcc available (a CUDA toolkit, or "
                f"nvidia-cuda-nvcc >= 13): fla uses TileLang only when it finds nvcc")
    return "check that triton is a version fla supports"


def _fla_unbound_reason(fla: str | None, cuda: bool) -> str:
    if fla is None:
        return "flash-linear-attention is not installed"
    error = _import_error("fla.ops.gated_delta_rule")
    if error is None:
        return f"fla {fla} imports now, but did not when transformers was imported"
    if not (isinstance(error, ModuleNotFoundError) and error.name == "triton"):
        return f"fla {fla} is installed, but `import fla.ops.gated_delta_rule` fails ({_describe(error)})"
    if cuda:
        return f"fla {fla} is installed, but its Triton kernels need triton, which is not installed"
    return f"fla {fla} is installed, but its Triton kernels need a CUDA device and triton; neither is here"


def _import_error(module: str) -> Exception | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install raises more than ImportError
        return exc
    return None


def _causal_conv1d(facts: _Facts) -> tuple[bool, str, dict]:
    from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

    conv = vars(qwen)["causal_conv1d_fn"]
    impl = _bound(conv)
    detail = {"conv": _qualname(impl)}
    if impl is conv.__wrapped__:
        if _version("causal-conv1d") is None:
            why = "causal-conv1d is not installed"
        elif error := _import_error("causal_conv1d"):
            why = f"causal-conv1d is installed, but `import causal_conv1d` fails ({_describe(error)})"
        else:
            why = "causal-conv1d imports now, but did not when transformers was imported"
        if facts.cuda:
            facts.add("ok", "causal-conv1d is optional: pip install causal-conv1d for the fused short convolution of "
                            "the Gated DeltaNet")
        return False, why + ": transformers uses its torch F.conv1d fallback", detail
    if not facts.cuda:
        facts.add("warn", "transformers binds causal_conv1d's CUDA kernel, but there is no CUDA device")
        return False, f"bound to {_qualname(impl)}, which needs a CUDA device", detail
    return True, f"transformers calls {_qualname(impl)}", detail


def _deepspeed_op(class_name: str, needed: Callable[[dict], bool], facts: _Facts) -> tuple[bool, str, dict]:
    """Whether DeepSpeed can load the op without compiling, or compile it here; ``needed(plan)``: the config uses it."""
    import torch
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops
    from deepspeed.ops.op_builder.builder import CUDAOpBuilder, assert_no_cuda_mismatch
    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available

    need = needed(facts.plan) if facts.plan is not None else None
    accel = get_accelerator()
    builder = accel.create_op_builder(class_name)
    if builder is None:
        if need:
            facts.add("error", f"the config needs DeepSpeed's {class_name}, which the {accel._name} accelerator lacks")
        return False, f"DeepSpeed's {accel._name} accelerator has no {class_name}", {}
    cuda_op = isinstance(builder, CUDAOpBuilder) and facts.cuda
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    detail = {"builder": type(builder).__module__ + "." + class_name, "compatible": builder.is_compatible(False),
              "prebuilt": bool(installed_ops.get(builder.name)) and accelerator_name == accel._name,
              "jit_cache": _jit_cache(builder.name), "c++": cxx, "ninja": is_ninja_available(),
              "cuda_home": CUDA_HOME if cuda_op else None}
    missing = [] if detail["compatible"] else [f"a compatible system ({builder.error_log})"]
    if cxx is None:
        missing.append("a C++ compiler (c++, or $CXX)")
    if not detail["ninja"]:
        venv_ninja = Path(sys.executable).parent / "ninja"
        missing.append(f"ninja on PATH ({venv_ninja} exists: put its directory on PATH)" if venv_ninja.exists()
                       else "ninja on PATH (pip install ninja)")
    if cuda_op:
        try:
            assert_no_cuda_mismatch(builder.name)
        except Exception as exc:
            missing.append(f"nvcc matching torch's CUDA {torch.version.cuda} ({_describe(exc)})")
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if arch is None:
            facts.add("ok", "TORCH_CUDA_ARCH_LIST is unset: DeepSpeed's JIT builds for the visible GPUs; if you set "
                            "it, write MAJOR.MINOR entries (9.0 on Hopper, not 9.0a)")
        elif "a" in arch.replace("+PTX", ""):
            missing.append(f"a TORCH_CUDA_ARCH_LIST of MAJOR.MINOR[+PTX] entries (DeepSpeed's JIT cannot parse "
                           f"'{arch}': on Hopper write 9.0, not 9.0a)")
    detail["ready"] = ready = detail["prebuilt"] or not missing
    if detail["prebuilt"]:
        state = "prebuilt in the deepspeed install"
    elif missing:
        state = "not prebuilt, and it cannot be JIT-built here: missing " + "; ".join(missing)
        facts.add("error" if need else "warn", f"DeepSpeed {builder.name}: {state}"
                  + ("" if need else " (only configs that use it need it)"))
    elif detail["jit_cache"]:
        state = f"JIT-built before (cached at {detail['jit_cache']})"
    else:
        state = "not prebuilt; JIT-buildable here: the first run that uses it compiles it (minutes)"
    usage = {True: "this config uses it", False: "this config does not use it", None: "used by configs that need it"}
    return bool(need and ready), f"{state}; {usage[need]}", detail


def _jit_cache(op: str) -> str | None:
    """The op's library in torch's extension cache, where DeepSpeed's JIT build leaves it (torch's layout)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        accel = f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else \
            f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        py = f"py{sys.version_info.major}{sys.version_info.minor}{sys.abiflags}"
        root = os.path.join(get_default_build_root(), f"{py}_{accel}")
    lib = Path(root, op, f"{op}.so")
    return str(lib) if lib.is_file() else None


def _fused_adamw(facts: _Facts) -> tuple[bool, str, dict]:
    if facts.plan is not None and facts.plan["optimizer"] == "deepspeed":
        return False, "this config uses DeepSpeed's optimizer instead", {}
    if facts.cuda:
        return True, "CUDA: the trainer passes fused=True", {}
    return False, "no CUDA device: the trainer's AdamW runs unfused", {}


def _bf16(facts: _Facts) -> tuple[bool, str, dict]:
    import torch

    if facts.cuda:
        native = torch.cuda.is_bf16_supported()
        why = "the GPU computes bf16 natively" if native else "this GPU has no native bf16: use fp16 or fp32"
    else:
        native = False
        flags = ", ".join(facts.devices["cpu"]["bf16_flags"]) or "no bf16 instructions"
        why = f"no CUDA device (CPU: {flags}); bf16 training on a CPU is slower than fp32: use {CPU_CONFIGS}"
    if facts.plan is not None and facts.plan["precision"] != "bf16":
        why += f"; this config trains in {facts.plan['precision']}"
    used = native and (facts.plan is None or facts.plan["precision"] == "bf16")
    return used, why, {"native": native}


def _backend(name: str, facts: _Facts) -> tuple[bool, str, dict]:
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    available = {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}[name]()
    chosen = get_accelerator().communication_backend_name()
    why = f"torch {'has' if available else 'lacks'} {name}; DeepSpeed's accelerator uses {chosen}"
    return available and chosen == name, why, {"available": available}


def _mpi(facts: _Facts) -> tuple[bool, str, dict]:
    venv_mpirun = Path(sys.executable).parent / "mpirun"
    mpirun = shutil.which("mpirun") or (f"{venv_mpirun} (not on PATH)" if venv_mpirun.exists() else None)
    v = facts.versions
    have = f"mpi4py {v['mpi4py']}" + (f" ({v['MPI library']})" if v["MPI library"] else "") if v["mpi4py"] else \
        "mpi4py is not installed"
    used = facts.launcher == "mpi" and v["mpi4py"] is not None
    if facts.launcher == "mpi" and not used:
        facts.add("warn", "launched by MPI, but mpi4py is not installed: DeepSpeed cannot discover the ranks; "
                          "pip install mpi4py")
    when = "launched by mpirun" if facts.launcher == "mpi" else "used when launched by mpirun"
    return used, f"{have}; mpirun: {mpirun or 'not found'}; {when}", {"mpirun": mpirun}


FAST_PATHS: list[tuple[str, Callable[[_Facts], tuple[bool, str, dict]]]] = [
    ("Gated DeltaNet kernels (fla)", _gated_deltanet),
    ("causal-conv1d", _causal_conv1d),
    ("DeepSpeed CPUAdam (ZeRO optimizer offload)",
     partial(_deepspeed_op, "CPUAdamBuilder", lambda plan: plan["offload_optimizer"])),
    ("DeepSpeed FusedAdam (optim.backend=deepspeed)",
     partial(_deepspeed_op, "FusedAdamBuilder",
             lambda plan: plan["optimizer"] == "deepspeed" and not plan["offload_optimizer"])),
    ("fused AdamW (torch)", _fused_adamw),
    ("bf16", _bf16),
    ("NCCL (torch.distributed)", partial(_backend, "nccl")),
    ("gloo (torch.distributed)", partial(_backend, "gloo")),
    ("MPI launch (mpi4py + mpirun)", _mpi),
]


# --- helpers --------------------------------------------------------------------------------------------------------

def _bound(wrapper):
    """The function a transformers ``use_kernel_func_from_hub_with_fallback`` wrapper calls."""
    return inspect.getclosurevars(wrapper).nonlocals.get("implementation", wrapper)


def _qualname(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _describe(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:300]}"


def _verdict(level: str, message: str) -> dict:
    return {"level": level, "message": message}


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send whatever writes to file descriptor 1 (Python or C) to stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
