"""Train a DAMBench baseline: ``python baselines/train.py --config baselines/configs/NAME.yaml``.

AdamW with the paper's schedule (linear warm-up from 1e-5 to 1e-4 over the first sixth of the
steps, cosine decay to 3e-6), mixed precision on GPU, gradient clipping, a fixed seed, JSONL logs,
a checkpoint each epoch (``last.pt``) and the best one on validation (``best.pt``); re-running the
same command resumes from ``last.pt``. Data-parallel with ``torchrun --nproc_per_node N
baselines/train.py ...`` (NCCL on GPU, gloo on CPU); each rank takes every N-th sample of the same
shuffled order, so N processes with batch b follow one process with batch N*b.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.config import RunConfig, load_run_config  # noqa: E402
from baselines.interface import DABatch  # noqa: E402
from baselines.registry import create_model  # noqa: E402


def learning_rate(step: int, total_steps: int, cfg) -> float:
    """The paper's schedule at optimiser step ``step`` (0-based) of ``total_steps``."""
    warmup = max(1, int(round(cfg.warmup_fraction * total_steps)))
    if step < warmup:
        return cfg.lr_start + (cfg.lr_peak - cfg.lr_start) * step / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr_end + 0.5 * (cfg.lr_peak - cfg.lr_end) * (
        1 + math.cos(math.pi * min(progress, 1))
    )


class EpochSampler(torch.utils.data.Sampler):
    """The same shuffled order of all samples for every rank; rank r takes positions r, r+N, ...

    The order depends only on (seed, epoch). The sample count is padded by repeating the first
    samples so every rank gets the same number of steps.
    """

    def __init__(
        self, n: int, *, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True
    ):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self):
        order = self._order()
        padded = order + order[: (-len(order)) % self.world]
        return iter(padded[self.rank :: self.world])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def make_loaders(cfg: RunConfig, rank: int, world: int):
    """Train and validation loaders, the normalisation stats and the channel count."""
    from dambench.batching import DATorchDataset, make_dataloader
    from dambench.load import open_dataset, stats_from_attrs

    train_ds = open_dataset(cfg.task.dataset, split="train")
    val_ds = open_dataset(cfg.task.dataset, split="validation")
    stats = stats_from_attrs(train_ds)
    seed = cfg.train.seed
    train_samples = DATorchDataset(
        train_ds, stats=stats, train=True, patch=cfg.task.patch, seed=seed
    )  # with patches there are more samples than cycles
    sampler = EpochSampler(len(train_samples), rank=rank, world=world, seed=seed)
    common = {"num_workers": cfg.task.num_workers, "seed": seed}
    train = make_dataloader(
        train_samples, batch_size=cfg.task.batch_size, sampler=sampler, **common
    )
    val = make_dataloader(
        val_ds,
        batch_size=cfg.task.batch_size,
        train=False,
        stats=stats,
        patch=cfg.task.patch,
        **common,
    )
    return train, val, sampler, train_ds.sizes["channel"]


def _checkpoint(path: Path, **state) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def validate(model, loader, device) -> dict[str, float]:
    """Mean loss and MSE (normalised units) over a loader."""
    model.eval()
    totals = {"loss": 0.0, "mse": 0.0}
    count = 0
    with torch.no_grad():
        for raw in loader:
            batch = DABatch.from_loader(raw).to(device)
            totals["loss"] += float(model.loss(batch).loss) * batch.shape[0]
            totals["mse"] += (
                float(((model(batch).mean - batch.target) ** 2).mean()) * batch.shape[0]
            )
            count += batch.shape[0]
    model.train()
    return {name: value / max(count, 1) for name, value in totals.items()}


def run(cfg: RunConfig, *, verbose: bool = True) -> dict:
    """Train (or resume) and return the final record (epoch, losses, best validation loss)."""
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.train.seed)
    train_loader, val_loader, sampler, n_channels = make_loaders(cfg, rank, world)
    kwargs = {"in_chans": n_channels, **cfg.model.kwargs}
    model = create_model(cfg.model.name, **kwargs).to(device)
    trainer = LossModule(model)
    if world > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(trainer)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr_start, weight_decay=cfg.train.weight_decay
    )
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    out = Path(cfg.train.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    steps_per_epoch = len(train_loader)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.train.epochs
    start_epoch, step, best = 0, 0, float("inf")
    last = out / "checkpoints" / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        if state["config"] != cfg.to_dict():
            raise ValueError(
                f"{last} was written by a run with a different config; resume with the same "
                "config or choose another train.out."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, best = state["epoch"] + 1, state["step"], state["best"]
    if rank == 0:
        _save_run_info(out, cfg, n_channels)
    record = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        sampler.set_epoch(epoch)
        train_loader.dataset.set_epoch(epoch)
        losses = []
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", disable=not verbose or rank != 0)
        for i, raw in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, cfg.train)
            batch = DABatch.from_loader(raw).to(device)
            with torch.autocast(device.type, enabled=use_amp):
                loss = trainer(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        metrics = validate(model, val_loader, device)
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": float(np.mean(losses)),
            "val_loss": metrics["loss"],
            "val_mse": metrics["mse"],
            "lr": learning_rate(step - 1, total_steps, cfg.train),
        }
        if rank == 0:
            _log(out / "log.jsonl", record)
            if metrics["loss"] < best:
                best = metrics["loss"]
                _checkpoint(
                    out / "checkpoints" / "best.pt",
                    model=model.state_dict(),
                    epoch=epoch,
                    val_loss=best,
                    config=cfg.to_dict(),
                )
            _checkpoint(
                last,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(),
                epoch=epoch,
                step=step,
                best=best,
                config=cfg.to_dict(),
            )
        if world > 1:
            dist.barrier()
    record["best_val_loss"] = best
    return record


class LossModule(torch.nn.Module):
    """Wraps a model so its training loss is the forward pass (what DDP synchronises)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: DABatch) -> torch.Tensor:
        return self.model.loss(batch).loss


def _save_run_info(out: Path, cfg: RunConfig, n_channels: int) -> None:
    import yaml

    import dambench

    info = {
        "config": cfg.to_dict(),
        "dambench_version": dambench.__version__,
        "n_channels": n_channels,
        "torch_version": str(torch.__version__),
    }
    (out / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file in baselines/configs/")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.config, args.overrides)
    record = run(cfg, verbose=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(record))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
