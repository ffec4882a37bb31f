"""The shadow trainer: ``clsd-ds train stage=shadow``, the project's DeepSpeed loop fed from Redis instead of shards.

Every optimizer step takes ``train.batch_size`` trajectories (one task's group of rollouts each) from the stream
(``transport.py``), refuses those ``trajectory.problem`` finds wrong (counted per reason, never a crash), and
minimises the GRPO loss of ``policy.py`` over every drafted block of the step: each block's log-probability is
recomputed under the DiT being trained and under the frozen starting drafter (the KL reference), from the verifier's
state after the block's prefix — as the primary drafted it. Checkpoints, preemption and resume are the loop's; the
source's position is the list of stream ids used since the last checkpoint: after a checkpoint they are
acknowledged, and a restarted trainer acknowledges the ones its checkpoint covers before it reads its pending
entries again (those were used only by updates the crash lost, so they are used again: none lost, none used twice).
Every checkpoint also exports the DiT to ``<run_dir>/versions/v<step>`` and announces it (a version every
``train.save_every`` updates). ``<run_dir>/used.jsonl`` lists, per checkpoint, the ids its updates used.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..dit import CausalDiT, save_dit
from ..flow import Readout
from ..train.loop import StopWaiting
from ..verifier import Verifier
from ..verifier_state import read_prefixes
from .policy import Block, PolicyConfig, group_advantages, grpo_loss, log_prob
from .trajectory import decode, problem
from .transport import Transport, retry

LOG = logging.getLogger("clsd_ds")


@dataclass
class ShadowConfig:
    redis: str = "redis://127.0.0.1:6379/0"  # the Redis both roles meet in
    prefix: str = "clsd"  # key prefix (several loops can share one Redis)
    consumer: str = "trainer"  # this trainer's name in the consumer group (rank r reads as <consumer>-<r>)
    max_len: int = 10_000  # the trajectory stream's bound
    poll_ms: int = 1000  # how long one read waits for trajectories

    def validate(self) -> None:
        from ..config import ConfigError

        if self.max_len < 1 or self.poll_ms < 1:
            raise ConfigError("fields 'shadow.max_len' / 'shadow.poll_ms': expected positive integers")


def _everyone(ids: list[str]) -> list[str]:
    """Every rank's ``ids``, concatenated in rank order (a collective: all ranks call it)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return list(ids)
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(ids))
    return [i for part in parts for i in part]


class RedisSource:
    """Batches of valid trajectories from the stream for one rank; its state is what the checkpoint covers."""

    skipped_shards = 0

    def __init__(self, task: "ShadowTask", micro: int, rank: int, is_main: bool, state: dict | None, stop,
                 run_dir: Path):
        self.task, self.micro, self.is_main, self.stop, self.run_dir = task, micro, is_main, stop, Path(run_dir)
        cfg = task.shadow
        self.transport = Transport(cfg.redis, cfg.prefix, cfg.max_len)
        self.consumer = f"{cfg.consumer}-{rank}"
        retry(self.transport.join, "join")
        self.used: list[str] = []
        self.cursor: str | None = "0"  # first, this consumer's pending entries (a restart), from the start
        covered = _everyone(state.get("used", []) if state else [])  # by the checkpoint this run resumes from
        if is_main:  # the ledger missed them if the crash came between the checkpoint and its line
            logged = {i for line in self._ledger() for i in line["ids"]}
            missing = [i for i in covered if i not in logged]
            if missing:
                self._log_used({"step": None, "ids": missing, "on_resume": True})
        if state and state.get("used"):
            retry(lambda: self.transport.ack(state["used"]), "ack")
        task.versions.update(state.get("versions", []) if state else [])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        got: list[tuple[str, dict]] = []
        cfg = self.task.shadow
        while len(got) < self.micro:
            if self.stop.received:
                raise StopWaiting
            entries, last = retry(lambda: self.transport.receive(self.consumer, self.micro - len(got), cfg.poll_ms,
                                                                 self.cursor), "receive")
            if self.cursor is not None:  # paging through the pending entries; none left: new ones from now on
                self.cursor = last
            for entry_id, traj in entries:
                reason = "not_json" if traj is None else self.task.problem(traj)
                if reason:
                    LOG.warning("trajectory %s refused: %s", entry_id, reason)
                    retry(lambda: self.transport.reject(entry_id, reason), "reject")
                else:
                    got.append((entry_id, traj))
        self.used += [i for i, _ in got]
        return {"ids": [i for i, _ in got], "trajectories": [t for _, t in got]}

    def _ledger(self) -> list[dict]:
        path = self.run_dir / "used.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def _log_used(self, entry: dict) -> None:
        with open(self.run_dir / "used.jsonl", "a") as fh:
            fh.write(json.dumps({**entry, "time": time.time()}) + "\n")

    def state_dict(self) -> dict:
        return {"used": list(self.used), "versions": sorted(self.task.versions)}

    def saved(self, step: int, export) -> None:
        """After checkpoint ``step``: export and announce it as a version, then acknowledge what it covers."""
        out = self.run_dir / "versions" / f"v{step}"
        export(out)  # every rank (ZeRO-3 gathers); rank 0 writes
        used = _everyone(self.used)
        if self.is_main:
            retry(lambda: self.transport.publish(step, out), "publish")
            self._log_used({"step": step, "ids": used})
        self.task.versions.add(step)
        retry(lambda: self.transport.ack(self.used), "ack")
        self.used = []

    def close(self) -> None:
        self.transport.client.close()


class ShadowTask:
    """The DiT trained by GRPO on the primary's trajectories (module docstring)."""

    def __init__(self, dit: CausalDiT, verifier: Verifier, policy: PolicyConfig, shadow: ShadowConfig):
        policy.validate()
        shadow.validate()
        self.module, self.verifier, self.policy, self.shadow = dit, verifier, policy, shadow
        self.reference = copy.deepcopy(dit).eval().requires_grad_(False)  # the starting drafter: the KL's anchor
        self.block_len = dit.cfg.block_len
        self.versions = {0}  # the starting drafter is version 0; each checkpoint adds its step
        self.embedding = None

    def batch_source(self, micro: int, dist_info, state: dict | None, stop, run_dir) -> RedisSource:
        return RedisSource(self, micro, dist_info.rank, dist_info.is_main, state, stop, run_dir)

    def problem(self, traj: dict) -> str | None:
        v = self.verifier.config
        return problem(traj, self.versions, self.module.flow.euler_steps, self.block_len, v.hidden_size, v.vocab_size)

    def setup(self, dist_info, dtype: torch.dtype, manifest) -> None:
        lm = self.verifier.lm.to(dtype).to(dist_info.device)
        self.embedding = lm.get_input_embeddings().weight
        self.reference.to(dist_info.device)

    def readout(self) -> Readout | None:
        if self.module.flow.objective != "tokens":
            return None
        return Readout(self.verifier.lm.lm_head, self.embedding, self.module.cfg.embed_scale)

    def _block_logps(self, model, traj: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """(log π_θ, log π_old, log π_ref) [B] of the trajectory's B drafted blocks (every cycle of every rollout),
        each over the positions the primary scored, and each block's rollout index. The blocks of one length K (a
        cycle may draft fewer than block_len tokens) are one batch: their prefixes (each a prefix of its rollout's
        text: the prompt and the tokens committed before the cycle) go through the verifier in one prefix pass, the
        blocks through the DiT in one pass each for θ and the reference."""
        flow, lm, scale = self.module.flow, self.verifier.lm, self.module.cfg.embed_scale
        readout = self.readout()
        by_len: dict[int, list] = {}
        for j, rollout in enumerate(traj["rollouts"]):
            text = traj["prompt"] + rollout["completion"]
            for c in rollout["cycles"]:
                by_len.setdefault(len(c["tokens"]), []).append((text[:c["length"]], c, j))
        new, old, ref, owner = [], [], [], []
        for group in by_len.values():
            lengths = torch.tensor([len(p) for p, _, _ in group], device=device)
            ids = torch.tensor([p + [0] * (int(lengths.max()) - len(p)) for p, _, _ in group], device=device)
            cond, prefix = read_prefixes(lm, ids, lengths, self.embedding)
            anchor = self.embedding[lm.lm_head(cond).argmax(-1)] / scale if flow.anchor else None
            block = Block(torch.stack([decode(c["states"]) for _, c, _ in group], 1).to(device),
                          torch.tensor([c["tokens"] for _, c, _ in group], device=device),
                          torch.tensor([float(c["logp"]) for _, c, _ in group], device=device))
            ctx = (cond, prefix) if self.module.cfg.prefix_state else (cond,)
            scored = torch.tensor([c["scored"] for _, c, _ in group], device=device)  # as the primary scored it
            new.append(log_prob(lambda x, t: model(x, t, *ctx), block, flow, self.policy, anchor, readout, scored))
            with torch.no_grad():
                ref.append(log_prob(lambda x, t: self.reference(x, t, *ctx), block, flow, self.policy, anchor,
                                    readout, scored))
            old.append(block.logp)
            owner += [j for _, _, j in group]
        return torch.cat(new), torch.cat(old), torch.cat(ref), owner

    def loss(self, model, batch: dict, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict]:
        device = self.embedding.device
        logp, old, ref, adv, rewards = [], [], [], [], []
        for traj in batch["trajectories"]:
            r = torch.tensor([float(x["reward"]) for x in traj["rollouts"]])
            a = group_advantages(r)
            new_t, old_t, ref_t, owner = self._block_logps(model, traj, device)
            logp.append(new_t)
            old.append(old_t)
            ref.append(ref_t)
            adv += [a[j] for j in owner]
            rewards.append(r)
        loss, stats = grpo_loss(torch.cat(logp), torch.cat(old), torch.stack(adv).to(device), torch.cat(ref),
                                self.policy)
        r = torch.cat(rewards)
        blocks = len(adv)
        metrics = {"loss": (loss.detach() * blocks, blocks), "reward": (r.sum(), r.numel()),
                   "blocks": (torch.tensor(float(blocks)), len(batch["trajectories"])),
                   **{k: (torch.tensor(v * blocks), blocks) for k, v in stats.items()}}
        return loss, metrics

    def flops_per_token(self) -> float:
        return 6.0 * sum(p.numel() for p in self.module.parameters())

    def export(self, state_dict: dict, out_dir: Path) -> None:
        save_dit(state_dict, self.module.text_config, self.module.cfg, out_dir, self.module.flow)

    def decoder(self, engine, device, cfg):
        return None
