"""Training checkpoints shared by every training job: safetensors only, written to a temporary folder
and renamed, so a killed job leaves the previous checkpoint intact.

    <out_dir>/checkpoints/last/
        <name>.safetensors        one per module (e.g. model, flow_net; ema: the weight average)
        train_state.safetensors   optimizer tensors and every random generator's state
        state.json                step, model config, optimizer layout, extra metadata

Resuming restores all of it, so a resumed CPU run continues bit-exactly.
"""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CKPT_DIR = "checkpoints/last"


def cpu_tensors(tensors: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def flatten_optimizer(optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors = {
        f"opt.{i}.{name}": v for i, s in state["state"].items() for name, v in s.items() if torch.is_tensor(v)
    }
    return tensors, {
        "param_groups": state["param_groups"],
        "state_keys": {i: list(s) for i, s in state["state"].items()},
    }


def save_checkpoint(
    out_dir: Path, modules: dict[str, nn.Module], optimizer, step: int, gen: torch.Generator, meta: dict
) -> None:
    """Write every module, the optimizer and RNG state to out_dir/checkpoints/last, atomically.
    `meta` must hold `model_config` (checked on resume) and whatever else the job wants kept."""
    final = Path(out_dir) / CKPT_DIR
    tmp = final.with_name(f".last.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file(cpu_tensors(module.state_dict()), tmp / f"{name}.safetensors")
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    rng = {"torch_rng": torch.get_rng_state(), "batch_rng": gen.get_state()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state()
    save_file(cpu_tensors(opt_tensors | rng), tmp / "train_state.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta} | meta, indent=1))
    old = final.with_name(".last.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def restore_interrupted_swap(out_dir: Path) -> None:
    """A run killed between save_checkpoint's two renames leaves only `.last.old`: put it back."""
    final = Path(out_dir) / CKPT_DIR
    old = final.with_name(".last.old")
    if not final.exists() and (old / "state.json").is_file():
        old.rename(final)


def has_checkpoint(out_dir: Path) -> bool:
    return (Path(out_dir) / CKPT_DIR / "state.json").is_file()


def load_checkpoint(
    out_dir: Path,
    modules: dict[str, nn.Module],
    optimizer,
    gen: torch.Generator,
    model_config: dict,
    hint: str,
    optional: set[str] = frozenset(),
) -> dict:
    """Restore what save_checkpoint wrote; refuses a checkpoint of another model config (`hint` says how
    to start afresh instead). Modules named in `optional` may be missing (a weight average a run did not
    keep). Returns its state.json, with the names of the modules restored under "loaded"."""
    ckpt = Path(out_dir) / CKPT_DIR
    meta = json.loads((ckpt / "state.json").read_text())
    if meta["model_config"] != model_config:
        raise ValueError(
            f"checkpoint {ckpt} was trained with model config {meta['model_config']}, not {model_config}; {hint}"
        )
    loaded = []
    for name, module in modules.items():
        if name in optional and not (ckpt / f"{name}.safetensors").is_file():
            continue
        module.load_state_dict(load_file(ckpt / f"{name}.safetensors"))
        loaded.append(name)
    tensors = load_file(ckpt / "train_state.safetensors")
    device = next(iter(modules.values())).parameters().__next__().device
    opt_state = {
        int(i): {name: tensors[f"opt.{i}.{name}"].to(device) for name in names}
        for i, names in meta["optimizer"]["state_keys"].items()
    }
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])
    if "cuda_rng" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda_rng"])
    gen.set_state(tensors["batch_rng"])
    return meta | {"loaded": loaded}


def checkpoint_folder(path: str | Path, what: str) -> Path:
    """The checkpoint folder of a run folder (or the folder itself); a missing one is an error naming `what`."""
    path = Path(path)
    ckpt = path / CKPT_DIR if (path / CKPT_DIR).is_dir() else path
    if not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"no {what} checkpoint at {path} (expected {CKPT_DIR}/state.json)")
    return ckpt


def read_trained_meta(path: str | Path, what: str) -> dict:
    """The state.json of a trained run (its model config and metadata), without loading weights."""
    return json.loads((checkpoint_folder(path, what) / "state.json").read_text())


def load_trained(
    path: str | Path, what: str, build: Callable[[dict], dict[str, nn.Module]]
) -> tuple[dict[str, nn.Module], dict]:
    """The modules of a trained run, from its run folder or its checkpoint folder, in eval mode:
    `build(model_config)` makes them, and each reads its weights from <name>.safetensors, except the
    module a weight average followed (state.json's `ema_of`), which reads the average. Returns them and
    the checkpoint's state.json; a missing checkpoint is an error that names `what`."""
    ckpt = checkpoint_folder(path, what)
    meta = json.loads((ckpt / "state.json").read_text())
    modules = build(meta["model_config"])
    for name, module in modules.items():
        weights = "ema" if name == meta.get("ema_of") else name
        module.load_state_dict(load_file(ckpt / f"{weights}.safetensors"))
        module.eval()
    return modules, meta
