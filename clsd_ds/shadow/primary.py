"""The shadow loop's primary: ``clsd-ds shadow-primary``. It never stops drafting.

For each task (the task set's ``split``, in a seeded order, round after round) it decodes ``rollouts`` completions
with the CLSD decoder under the stochastic ``policy`` and a rule under which the drafter changes the text
(``decode.acceptance: guillotine``: a drafted token is kept while the verifier gives it at least
``decode.threshold``, and of N candidates per cycle the one the verifier scores best; ``exact`` is refused, since
under it the text is the verifier's whatever the drafter does), checks each with
the task's checker in the sandbox, and sends the group as one trajectory (``trajectory.py``) tagged with the drafter
version that drafted it. Between tasks it looks for a newer announced version: it loads it in a background thread,
checks the export's checksum against the announcement, and switches only when it is loaded (a bad checksum is
logged and ignored); meanwhile, or if Redis is down, it keeps drafting with the weights it has, and a trajectory
it cannot send waits in a bounded local queue (overflow counted in ``metrics.jsonl``).
``<out>/metrics.jsonl``: one line per task (version, rewards, verdicts, seconds) and the running counts.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import redis
import torch

from ..config import ConfigError
from ..graft import load_drafter
from ..infer.decoder import DecodeConfig, SpeculativeDecoder
from ..verifier import Verifier, VerifierConfig, document_start_id, load_tokenizer
from .checkers import CHECKERS, Verdict
from .policy import PolicyConfig
from .sandbox import Sandbox, SandboxConfig
from .tasks import read_tasks
from .trainer import ShadowConfig
from .trajectory import FORMAT, VERSION, encode
from .transport import Transport, digest


@dataclass
class PrimaryConfig:
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    drafter: str = ""  # the starting drafter (version 0): an exported DiT or a run directory
    tokenizer: str | None = None  # default: verifier.path
    tasks: str = ""  # the task set (JSONL, tasks.py)
    split: str = "train"
    rollouts: int = 4  # completions per task: the group the advantages are relative to
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # acceptance: not exact (module docstring)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    out: str = "runs/shadow_primary"
    max_tasks: int = 0  # stop after this many tasks (0: never)
    queue: int = 256  # trajectories kept while Redis is unreachable
    seed: int = 0

    def validate(self) -> None:
        if not self.drafter or not self.tasks:
            raise ConfigError("fields 'drafter' and 'tasks': both required (a trained DiT, a task set)")
        if self.rollouts < 2:
            raise ConfigError(f"field 'rollouts': expected >= 2 (advantages are relative to the group), got "
                              f"{self.rollouts}")
        if self.tokenizer is None and self.verifier.path is None:
            raise ConfigError("field 'tokenizer': required when the verifier is not loaded from a directory")
        if self.decode.acceptance == "exact":
            raise ConfigError("field 'decode.acceptance': under 'exact' the text is the verifier's greedy text "
                              "whatever the drafter proposes, so no reward could change; use guillotine (with "
                              "decode.threshold) or sampling")


class Primary:
    def __init__(self, cfg: PrimaryConfig, log=print):
        cfg.validate()
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.verifier.path)
        self.verifier = Verifier.load(cfg.verifier)
        self.tasks = read_tasks(cfg.tasks, cfg.split)
        if not self.tasks:
            raise ConfigError(f"{cfg.tasks}: no task in split {cfg.split!r}")
        sandbox = Sandbox(cfg.sandbox)
        self.checkers = {name: CHECKERS[name](sandbox) for name in {t["checker"] for t in self.tasks}}
        self.transport = Transport(cfg.shadow.redis, cfg.shadow.prefix, cfg.shadow.max_len)
        self.version, self.decoder = 0, self._decoder(load_drafter(cfg.drafter, self.verifier))
        self.pending: deque = deque()
        self.counts = {"tasks": 0, "sent": 0, "queue_dropped": 0, "switches": 0, "bad_versions": 0}
        self._loading: threading.Thread | None = None
        self._loaded: tuple[int, object] | None = None
        self.stopping = False

    def request_stop(self) -> None:
        """Finish the task in hand, send what is queued, return (a signal handler calls this)."""
        self.stopping = True

    def _decoder(self, dit) -> SpeculativeDecoder:
        return SpeculativeDecoder(self.verifier.lm, dit.eval(), self.cfg.decode, policy=self.cfg.policy)

    # -- versions ----------------------------------------------------------------------------------------
    def _poll_version(self) -> None:
        """Switch to a version loaded in the background; start loading a newer announced one."""
        if self._loaded is not None:
            self.version, dit = self._loaded
            self.decoder, self._loaded = self._decoder(dit), None
            self.counts["switches"] += 1
            self.log(f"[primary] switched to drafter version {self.version}")
        if self._loading is not None and self._loading.is_alive():
            return
        try:
            latest = self.transport.latest()
        except (redis.ConnectionError, redis.TimeoutError):
            return
        if latest and latest["version"] > self.version:
            self._loading = threading.Thread(target=self._load, args=(latest,), daemon=True)
            self._loading.start()

    def _load(self, latest: dict) -> None:
        try:
            if digest(latest["path"]) != latest["sha256"]:
                raise ValueError("checksum differs from the announcement")
            dit = load_drafter(latest["path"], self.verifier)
        except Exception as exc:  # a half-copied or missing directory: keep drafting with what we have
            self.counts["bad_versions"] += 1
            self.log(f"[primary] version {latest['version']} at {latest['path']} not used: {exc}")
            return
        self._loaded = (latest["version"], dit)

    # -- one task ----------------------------------------------------------------------------------------
    def rollout(self, task: dict, seed: int) -> dict:
        ids = [document_start_id(self.tokenizer)] + self.tokenizer(task["prompt"], add_special_tokens=False)[
            "input_ids"]
        d = self.decoder
        d.generator.manual_seed(seed)
        d.trace = []
        out, _ = d.generate(ids, eos_id=self.tokenizer.eos_token_id)
        cycles, d.trace = d.trace, None
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        verdict = self.check(task, text)
        return {"prompt": ids, "completion": out, "text": text, "verdict": verdict.status, "reason": verdict.reason,
                "reward": verdict.reward, "cycles": [{**c, "states": encode(c["states"])} for c in cycles]}

    def check(self, task: dict, text: str) -> Verdict:
        """The verdict of the task's own checker (its ``checker`` field) on a decoded completion."""
        return self.checkers[task["checker"]].check(task, text)

    def task_group(self, task: dict, seed: int) -> dict:
        rollouts = [self.rollout(task, seed * 1000 + j) for j in range(self.cfg.rollouts)]
        prompt = rollouts[0].pop("prompt")
        for r in rollouts[1:]:
            r.pop("prompt")
        return {"format": FORMAT, "version": VERSION, "task": task["id"], "drafter_version": self.version,
                "prompt": prompt, "rollouts": rollouts, "time": time.time()}

    def _flush(self) -> None:
        while self.pending:
            try:
                self.transport.send(self.pending[0])
            except (redis.ConnectionError, redis.TimeoutError):
                return
            self.pending.popleft()
            self.counts["sent"] += 1

    def run(self) -> dict:
        order, n = random.Random(self.cfg.seed), 0
        with open(self.out / "metrics.jsonl", "a") as metrics:
            while (not self.cfg.max_tasks or n < self.cfg.max_tasks) and not self.stopping:
                tasks = list(self.tasks)
                order.shuffle(tasks)
                for task in tasks:
                    if (self.cfg.max_tasks and n >= self.cfg.max_tasks) or self.stopping:
                        break
                    self._poll_version()
                    t0 = time.time()
                    with torch.no_grad():
                        traj = self.task_group(task, self.cfg.seed + n)
                    if len(self.pending) == self.cfg.queue:
                        self.pending.popleft()
                        self.counts["queue_dropped"] += 1
                    self.pending.append(traj)
                    self._flush()
                    n += 1
                    self.counts["tasks"] = n
                    rewards = [r["reward"] for r in traj["rollouts"]]
                    metrics.write(json.dumps({"task": task["id"], "version": self.version, "rewards": rewards,
                                              "verdicts": [r["verdict"] for r in traj["rollouts"]],
                                              "seconds": round(time.time() - t0, 3), "queued": len(self.pending),
                                              **self.counts, "time": time.time()}) + "\n")
                    metrics.flush()
        deadline = time.monotonic() + 60
        while self.pending and time.monotonic() < deadline:  # the last ones, once Redis answers
            self._flush()
            if self.pending:
                time.sleep(0.5)
        self.counts["unsent"] = len(self.pending)
        return dict(self.counts)
