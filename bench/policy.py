"""Latency and few-step quality of the trained policy (make bench-policy -> reports/bench/policy.json).

    make bench-policy      # after make results: ours finetuned with shortcut training, then this bench
    python -m bench.policy experiment=results bench_policy.policy=outputs/results/policy/ours-shortcut/pretrained_model

- chunk_latency_ms: one chunk from the decoder alone (its context already computed), batch 1, per
  number of steps: 10 Euler steps and 1 or 2 shortcut steps; p50 and p99.
- policy_step_ms: a full select_action that computes a new chunk (processors, backbone, decoder), batch 1.
- sampler_gap: on demo frames with fixed noise (normalized units, the executed n_action_steps), the
  mean squared difference between the few-step chunk and the 10-step one from the same noise, over that
  between two 10-step chunks from different noise (the sampler's own spread): 0 is a few-step mode that
  reproduces the 10 steps, 1 one that is as far from them as another sample.
- success_k10 / success_few_step: average success of the same checkpoint with 10 Euler steps and with 2
  shortcut steps on the same scenes, measured with sim.evaluate (bench_policy.episodes per task and
  protocol). The checkpoint must have been trained for shortcut sampling (shortcut_fraction > 0): the
  headline recipe trains none, so make bench-policy finetunes a copy of ours that does.
"""

import json
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from bench.common import percentiles, time_calls
from policies.flow_matching import euler_sample, steps_to_index
from policies.vipra import make_policy


def observation(policy, seed: int = 0) -> dict:
    size = policy.policy.backbone.cfg.image_size
    g = torch.Generator().manual_seed(seed)
    return {
        policy.config.image_key: torch.rand(1, 3, size, size, generator=g),
        "observation.state": torch.randn(1, policy.config.state_dim, generator=g) * 0.1,
        "task": ["put carrot on plate"],
    }


@torch.inference_mode()  # no autograd bookkeeping: about half the time of no_grad for these small ops
def latency(policy, repeats: int) -> dict:
    """`policy` from make_policy: the chunk alone times the model's decoder, the full step the policy
    with its processors, as the harness calls it."""
    obs, model = observation(policy), policy.policy
    memory = model._encode(policy.preprocessor(dict(obs)))
    noise = torch.randn(1, policy.config.chunk_size, policy.config.action_dim)
    velocity = lambda x, t, d: model.decoder(x, t, d, memory)  # noqa: E731
    chunk = {}
    for steps, shortcut in ((10, False), (2, True), (1, True)):
        index = steps_to_index(steps, shortcut)
        name = f"{steps}_steps_" + ("shortcut" if shortcut else "euler")
        chunk[name] = percentiles(
            time_calls(lambda s=steps, i=index: euler_sample(velocity, noise, s, i), repeats, warmup=10)
        )

    def full_step():
        policy.reset()  # an empty queue: this call computes a new chunk
        policy.select_action(obs)

    return {
        "chunk_latency_ms": chunk,
        "policy_step_ms": percentiles(time_calls(full_step, repeats, warmup=10)),
    }


@torch.inference_mode()
def sampler_gap(policy, dataset: str, image_key: str, frames: int = 512, seed: int = 0) -> dict:
    """How far the few-step chunks are from the 10-step ones on demo frames (see the module docstring)."""
    from data.chunks import EpisodeBank
    from policies.train_policy import make_batch
    from policies.vipra.configuration_vipra import ACTION_KEY, STATE_KEY

    model, cfg = policy.policy, policy.config
    bank = EpisodeBank.load(dataset, image_key, [STATE_KEY, ACTION_KEY])
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(bank), generator=gen)[:frames].sort().values
    memory = model._encode(policy.preprocessor(make_batch(bank, rows, cfg.chunk_size, image_key, shift=0)))
    velocity = lambda x, t, d: model.decoder(x, t, d, memory)  # noqa: E731
    shape, n = (len(rows), cfg.chunk_size, cfg.action_dim), cfg.n_action_steps
    noise, other = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    k10 = euler_sample(velocity, noise, cfg.num_inference_steps)[:, :n]
    few_index = steps_to_index(cfg.num_few_steps, shortcut=True)
    few = euler_sample(velocity, noise, cfg.num_few_steps, few_index)[:, :n]
    spread = float(((euler_sample(velocity, other, cfg.num_inference_steps)[:, :n] - k10) ** 2).mean())
    gap = float(((few - k10) ** 2).mean())
    return {"few_vs_k10_mse": gap, "k10_vs_k10_mse": spread, "ratio": gap / spread, "frames": len(rows)}


def check_few_step_trained(policy, path: str) -> None:
    """Few-step sampling of a checkpoint never trained on shortcut targets measures nothing but that."""
    if policy.config.shortcut_fraction <= 0:
        raise ValueError(
            f"{path} was trained with shortcut_fraction={policy.config.shortcut_fraction}: its few-step mode "
            "is untrained; expected a checkpoint finetuned with model.policy.shortcut_fraction > 0 "
            "(make bench-policy trains one)"
        )


def success(cfg: DictConfig) -> dict:
    """Success with 10 Euler steps and with the few-step mode, one sim.evaluate over the same scenes."""
    out = Path(cfg.bench_policy.eval_dir)
    cmd = [
        sys.executable, "-m", "sim.evaluate", *[a for a in sys.argv[1:] if not a.startswith("bench_policy.")],
        f"policies.ours.path={cfg.bench_policy.policy}", f"policies.ours_few_step.path={cfg.bench_policy.policy}",
        "eval.policies=[ours,ours_few_step]", f"eval.episodes_per_task={cfg.bench_policy.episodes}",
        f"eval.report_dir={out}", "eval.save_videos=false",
    ]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    avg = json.loads((out / "results.json").read_text())["average_success"]
    return {"source": str(out / "results.json"), "ours": avg["ours"], "ours_few_step": avg["ours_few_step"]}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from bench.common import git_commit, write_atomic

    bcfg = cfg.bench_policy
    torch.set_num_threads(bcfg.threads)
    policy = make_policy(bcfg.policy)
    check_few_step_trained(policy, bcfg.policy)
    result = latency(policy, bcfg.repeats)
    result["sampler_gap"] = sampler_gap(policy, cfg.train.policy.dataset, cfg.task.image_key)
    rates = success(cfg)
    teacher = policy.config.shortcut_teacher_steps
    result |= {
        "success_k10": float(np.mean(list(rates["ours"].values()))),  # over protocols
        "success_few_step": float(np.mean(list(rates["ours_few_step"].values()))),
        "success_by_protocol": {"k10": rates["ours"], "few_step": rates["ours_few_step"]},
        "few_step": {
            "steps": policy.config.num_few_steps,
            "method": "shortcut (step-size conditioned)",
            "targets": f"distilled from {teacher} Euler steps" if teacher else "self-consistency",
        },
        "success_source": rates["source"],
        "policy": str(bcfg.policy),
        "threads": bcfg.threads,
        "command": "python -m bench.policy " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
    }
    write_atomic(Path(bcfg.out), json.dumps(result, indent=1) + "\n")
    chunk = result["chunk_latency_ms"]
    print(json.dumps(result, indent=1))
    print(
        f"policy bench: chunk p99 {chunk['10_steps_euler']['p99']:.1f} ms (10 steps) / "
        f"{chunk['2_steps_shortcut']['p99']:.1f} ms (2 steps); policy step p99 {result['policy_step_ms']['p99']:.1f} ms; "
        f"success {100 * result['success_k10']:.1f}% (10 steps) vs {100 * result['success_few_step']:.1f}% (2 steps), "
        f"sampler gap {result['sampler_gap']['ratio']:.3f} of the sampler's spread "
        f"-> {bcfg.out}"
    )


if __name__ == "__main__":
    main()
