"""Latency and few-step quality of the trained policy (make bench-policy -> reports/bench/policy.json).

    make bench-policy      # after make results: its ours (seed 0), 10 Euler steps against 1
    python -m bench.policy experiment=results bench_policy.few_step.method=shortcut bench_policy.few_step.steps=2 \
        bench_policy.policy=outputs/results/policy/ours-shortcut-distill/pretrained_model

The few-step mode is `bench_policy.few_step`: `euler` (plain Euler steps, any checkpoint: 1 step lands on
the decoder's mean chunk, make results' sampler since 55fd8b5) or `shortcut` (step-size conditioned; only
a checkpoint trained with model.policy.shortcut_fraction > 0).
- chunk_latency_ms: one chunk from the decoder alone (its context already computed), batch 1, for 10, 2
  and 1 steps of the few-step method (the same compute for either method); p50 and p99.
- policy_step_ms / policy_step_ms_few_step: a full select_action that computes a new chunk (processors,
  backbone, decoder), batch 1, with 10 Euler steps / the few-step mode.
- sampler_gap: on demo frames with fixed noise (normalized units, the executed n_action_steps), the
  mean squared difference between the few-step chunk and the 10-step one from the same noise, over that
  between two 10-step chunks from different noise (the sampler's own spread): 0 is a few-step mode that
  reproduces the 10 steps, 1 one that is as far from them as another sample (the mean chunk of a 1-step
  Euler mode sits about halfway: it is no sample).
- success_k10 / success_few_step: average success of the same checkpoint with 10 Euler steps and with
  the few-step mode on the same scenes and noise, measured with sim.evaluate (bench_policy.episodes per
  task and protocol).
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


def few_step_overrides(method: str, steps: int) -> dict:
    """make_policy's overrides that sample with `steps` steps of `method` (euler or shortcut)."""
    if method == "euler":
        return {"few_step": False, "num_inference_steps": steps}
    if method == "shortcut":
        steps_to_index(steps, shortcut=True)  # a power of two, or a clear error now rather than mid-run
        return {"few_step": True, "num_few_steps": steps}
    raise ValueError(f"bench_policy.few_step.method must be 'euler' or 'shortcut', got {method!r}")


@torch.inference_mode()  # no autograd bookkeeping: about half the time of no_grad for these small ops
def chunk_latency(policy, method: str, few_steps: int, repeats: int) -> dict:
    """The decoder alone, its context computed once: 10 Euler steps, and 2, 1 and `few_steps` of `method`."""
    obs, model = observation(policy), policy.policy
    memory = model._encode(policy.preprocessor(dict(obs)))
    noise = torch.randn(1, policy.config.chunk_size, policy.config.action_dim)
    velocity = lambda x, t, d: model.decoder(x, t, d, memory)  # noqa: E731
    chunk = {}
    modes = [(10, False)] + [(s, method == "shortcut") for s in sorted({2, 1, few_steps}, reverse=True)]
    for steps, shortcut in dict.fromkeys(modes):
        index = steps_to_index(steps, shortcut)
        name = f"{steps}_steps_" + ("shortcut" if shortcut else "euler")
        chunk[name] = percentiles(
            time_calls(lambda s=steps, i=index: euler_sample(velocity, noise, s, i), repeats, warmup=10)
        )
    return chunk


@torch.inference_mode()
def step_latency(policy, repeats: int) -> dict:
    """A full select_action that computes a new chunk, as the harness and the control loop call it."""
    obs = observation(policy)

    def full_step():
        policy.reset()  # an empty queue: this call computes a new chunk
        policy.select_action(obs)

    return percentiles(time_calls(full_step, repeats, warmup=10))


@torch.inference_mode()
def sampler_gap(
    policy, dataset: str, image_key: str, few_steps: int, shortcut: bool, frames: int = 512, seed: int = 0
) -> dict:
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
    k10 = euler_sample(velocity, noise, 10)[:, :n]
    few = euler_sample(velocity, noise, few_steps, steps_to_index(few_steps, shortcut))[:, :n]
    spread = float(((euler_sample(velocity, other, 10)[:, :n] - k10) ** 2).mean())
    gap = float(((few - k10) ** 2).mean())
    return {"few_vs_k10_mse": gap, "k10_vs_k10_mse": spread, "ratio": gap / spread, "frames": len(rows)}


def check_few_step_trained(policy, path: str) -> None:
    """Shortcut sampling of a checkpoint never trained on shortcut targets measures nothing but that."""
    if policy.config.shortcut_fraction <= 0:
        raise ValueError(
            f"{path} was trained with shortcut_fraction={policy.config.shortcut_fraction}: its shortcut mode "
            "is untrained; expected a checkpoint finetuned with model.policy.shortcut_fraction > 0, or "
            "bench_policy.few_step.method=euler"
        )


def policy_entry(path: str, overrides: dict) -> str:
    """A sim.evaluate policy entry (Hydra's flow syntax) for the checkpoint at `path` with `overrides`."""
    fields = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())
    return f"{{_target_: policies.vipra.make_policy, _partial_: true, path: {path}, {fields}}}"


def success(cfg: DictConfig, few: dict) -> dict:
    """Success with 10 Euler steps and with the few-step mode, one sim.evaluate over the same scenes."""
    out, path = Path(cfg.bench_policy.eval_dir), cfg.bench_policy.policy
    cmd = [
        sys.executable, "-m", "sim.evaluate", *[a for a in sys.argv[1:] if not a.startswith("bench_policy.")],
        f"+policies.bench_k10={policy_entry(path, few_step_overrides('euler', 10))}",
        f"+policies.bench_few_step={policy_entry(path, few)}",
        "eval.policies=[bench_k10,bench_few_step]", f"eval.episodes_per_task={cfg.bench_policy.episodes}",
        f"eval.report_dir={out}", "eval.save_videos=false",
    ]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    avg = json.loads((out / "results.json").read_text())["average_success"]
    return {"source": str(out / "results.json"), "k10": avg["bench_k10"], "few_step": avg["bench_few_step"]}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from bench.common import stamp, write_atomic

    bcfg = cfg.bench_policy
    method, steps = bcfg.few_step.method, int(bcfg.few_step.steps)
    few = few_step_overrides(method, steps)
    torch.set_num_threads(bcfg.threads)
    policy = make_policy(bcfg.policy, few_step=False, num_inference_steps=10)
    if method == "shortcut":
        check_few_step_trained(policy, bcfg.policy)
    result = {
        "chunk_latency_ms": chunk_latency(policy, method, steps, bcfg.repeats),
        "policy_step_ms": step_latency(policy, bcfg.repeats),
        "policy_step_ms_few_step": step_latency(make_policy(bcfg.policy, **few), bcfg.repeats),
        "sampler_gap": sampler_gap(
            policy, cfg.train.policy.dataset, cfg.task.image_key, steps, method == "shortcut"
        ),
    }
    rates = success(cfg, few)
    source = rates.pop("source")
    teacher = policy.config.shortcut_teacher_steps
    targets = {"euler": "none (plain Euler steps of the flow-matching decoder)",
               "shortcut": f"distilled from {teacher} Euler steps" if teacher else "self-consistency"}  # fmt: skip
    result |= {
        "success_k10": float(np.mean(list(rates["k10"].values()))),  # over protocols
        "success_few_step": float(np.mean(list(rates["few_step"].values()))),
        "success_by_protocol": rates,
        "few_step": {"steps": steps, "method": method, "targets": targets[method]},
        "success_source": source,
        "policy": str(bcfg.policy),
        "threads": bcfg.threads,
        **stamp("python -m bench.policy " + " ".join(sys.argv[1:])),
    }
    write_atomic(Path(bcfg.out), json.dumps(result, indent=1) + "\n")
    chunk, few_key = result["chunk_latency_ms"], f"{steps}_steps_{method}"
    print(json.dumps(result, indent=1))
    print(
        f"policy bench: chunk p99 {chunk['10_steps_euler']['p99']:.1f} ms (10 steps) / "
        f"{chunk[few_key]['p99']:.1f} ms ({few_key}); policy step p99 {result['policy_step_ms']['p99']:.1f} ms "
        f"(10 steps) / {result['policy_step_ms_few_step']['p99']:.1f} ms ({steps} {method}); success "
        f"{100 * result['success_k10']:.1f}% (10 steps) vs {100 * result['success_few_step']:.1f}% ({steps} {method}), "
        f"sampler gap {result['sampler_gap']['ratio']:.3f} of the sampler's spread -> {bcfg.out}"
    )


if __name__ == "__main__":
    main()
