"""The training loop every stage shares: budgets, lr schedule, EMA, checkpoints that resume, train_log.json."""

import copy
import json
import math
import os
import time
from pathlib import Path

import diffusers
import torch
import transformers


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_backends():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


CPU_AUTOCAST = {"enabled": False}


def start(seed: int, workdir: Path, cpu_bf16: bool = False) -> torch.device:
    """What every training command does first: quiet progress bars, torch seeded, backends set, the workdir made.
    cpu_bf16 makes autocast() use bf16 on the CPU too."""
    CPU_AUTOCAST["enabled"] = cpu_bf16
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    configure_backends()
    workdir.mkdir(parents=True, exist_ok=True)
    return device()


def autocasts(dev: torch.device) -> bool:
    """Whether autocast() computes in bf16 on dev: always on CUDA, on the CPU when start() was asked to."""
    return dev.type == "cuda" or CPU_AUTOCAST["enabled"]


def autocast(dev: torch.device):
    """bf16 autocast where autocasts(dev), else plain fp32."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocasts(dev))


def step_generator(dev: torch.device, seed: int, stage: str, step: int) -> torch.Generator:
    """The generator of one step's data and noise: a resumed run draws exactly what an unbroken one would."""
    stage_salt = sum(ord(c) * 131**i for i, c in enumerate(stage)) % 1_000_003
    generator = torch.Generator(device=dev)
    generator.manual_seed((seed * 1_000_003 + stage_salt) * 10_000_019 + step)
    return generator


class Ema:
    """Exponential moving average of a module's parameters, decay warmed up as (1 + step) / (10 + step)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int):
        decay = min(self.decay, (1 + step) / (10 + step))
        for shadow, live in zip(self.shadow.parameters(), module.parameters()):
            shadow.lerp_(live.detach(), 1 - decay)


def update_train_log(workdir: Path, key: str, entry: dict):
    path = workdir / "train_log.json"
    log = json.loads(path.read_text()) if path.exists() else {}
    log[key] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(log, indent=2))
    os.replace(tmp, path)


class Budget:
    """A stage stops at whichever comes first: max_steps, or budget_seconds of training (summed over resumed runs)."""

    def __init__(self, max_steps: int, budget_seconds: float):
        self.max_steps = max_steps
        self.budget_seconds = budget_seconds

    def progress(self, step: int, seconds: float) -> float:
        if self.max_steps <= 0 or self.budget_seconds <= 0:  # a zero budget skips the stage's training
            return 1.0
        return max(step / self.max_steps, seconds / self.budget_seconds)


def learning_rate(base: float, step: int, warmup: int, progress: float) -> float:
    """Linear warmup, then cosine from base to base/10 over the stage's progress (steps or time, whichever leads)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    stage: str,
    workdir: Path,
    modules: dict,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    budget: Budget,
    base_lr: float,
    warmup: int,
    emas: dict | None = None,
    companions: dict | None = None,
    after_step=None,
    params_to_clip=None,
    log_every: int = 25,
    checkpoint_seconds: float = 60.0,
    info: dict | None = None,
):
    """Runs loss_fn(step) -> scalar loss until the budget is spent; checkpoints to workdir/<stage>.ckpt and resumes from it.

    emas are updated after every optimizer step; companions (e.g. LCM's target network, which after_step updates)
    are only checkpointed with the run."""
    emas = emas or {}
    companions = companions or {}
    checkpoint = workdir / f"{stage}.ckpt"
    step, seconds, loss_avg, history = 0, 0.0, None, []
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, ema in emas.items():
            ema.shadow.load_state_dict(state["emas"][name])
        for name, module in companions.items():
            module.load_state_dict(state["companions"][name])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, loss_avg, history = state["step"], state["seconds"], state["loss_avg"], state["history"]
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        print(f"[{stage}] resumed at step {step} after {seconds:.1f} s", flush=True)

    def save():
        state = {
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "emas": {name: ema.shadow.state_dict() for name, ema in emas.items()},
            "companions": {name: module.state_dict() for name, module in companions.items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
            "seconds": seconds,
            "loss_avg": loss_avg,
            "history": history,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, checkpoint)

    if budget.progress(step, seconds) >= 1.0:
        print(f"[{stage}] already done: {step} steps, {seconds:.1f} s", flush=True)
        for module in modules.values():
            module.eval()
        return None
    run_start_step = step
    next_log = step + log_every
    run_start = time.perf_counter()
    last_mark, last_checkpoint = run_start, run_start
    pending = []  # losses not yet read back: .item() every step would stall the GPU queue
    for module in modules.values():
        module.train()
    while budget.progress(step, seconds) < 1.0:
        lr = learning_rate(base_lr, step, warmup, budget.progress(step, seconds))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params_to_clip is not None:
            torch.nn.utils.clip_grad_norm_(params_to_clip, 1.0)
        optimizer.step()
        for name, ema in emas.items():
            ema.update(modules[name], step)
        if after_step is not None:
            after_step(step)
        pending.append(loss.detach())
        step += 1
        if step % 10 == 0 or budget.progress(step, seconds) >= 1.0 or len(pending) >= 10:
            for value in torch.stack(pending).float().cpu().tolist():
                if not math.isfinite(value):
                    raise FloatingPointError(f"[{stage}] loss is {value} at step {step}")
                loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
            pending = []
            now = time.perf_counter()
            seconds += now - last_mark
            last_mark = now
            if step >= next_log or budget.progress(step, seconds) >= 1.0:
                next_log = step + log_every
                history.append({"step": step, "seconds": round(seconds, 2), "loss_avg": loss_avg, "lr": lr})
                print(f"[{stage}] step {step} {seconds:.1f} s loss_avg {loss_avg:.5f} lr {lr:.2e}", flush=True)
            if now - last_checkpoint > checkpoint_seconds:
                save()
                last_checkpoint = time.perf_counter()
    if pending:
        for value in torch.stack(pending).float().cpu().tolist():
            loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
        seconds += time.perf_counter() - last_mark
    save()
    run_seconds = time.perf_counter() - run_start
    entry = {
        "steps": step,
        "seconds": round(seconds, 2),
        "steps_this_run": step - run_start_step,
        "it_per_s_this_run": round((step - run_start_step) / run_seconds, 3) if run_seconds > 0 else None,
        "final_loss_avg": loss_avg,
        "max_steps": budget.max_steps,
        "budget_seconds": budget.budget_seconds,
        "base_lr": base_lr,
        "warmup_steps": warmup,
        "history": history,
        **(info or {}),
    }
    update_train_log(workdir, stage, entry)
    for module in modules.values():
        module.eval()
    print(f"[{stage}] done: {step} steps, {seconds:.1f} s, loss_avg {loss_avg}", flush=True)
    return entry
