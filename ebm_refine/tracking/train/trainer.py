"""Training loop of the box estimator: data sources from a config, checkpoint/resume, DDP.

The config (``net``, ``data``, ``train``, ``robust``), its checks and its data sources: :mod:`.config`.

DeepGUM (``robust.enabled``; Lathuilière et al., ECCV 2018, :mod:`ebm_refine.core.robust`): each training
pair's residual is its annotated test box refined by the estimator's gradient ascent minus the annotation, in
relative box coordinates (:func:`~ebm_refine.tracking.train.loss.refinement_residuals`); EM on the
residuals of the last ``period`` iterations (after ``warmup``) gives each pair an inlier responsibility r,
and the loss is the r-weighted mean of the per-pair losses. ``log.jsonl`` then also holds ``rho`` and
``mean_r``; the EM state is saved in ``checkpoint.pth`` and restored on resume.

Output folder: ``checkpoint.pth`` (network + optimizer + scheduler + iteration, written every
``checkpoint_interval`` iterations and at the end, atomically), ``net.pth`` (the self-contained network
the tracker loads), ``log.jsonl`` (one line per logged iteration), ``config.yaml``.

Distributed: with ``world_size > 1`` each process runs :func:`train` with its ``rank``; the network is
wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on GPU, each process on the GPU of its
``local_rank``: ``$LOCAL_RANK`` under torchrun, so several machines work), each rank reads its own share
of the sample stream (:class:`~ebm_refine.tracking.train.data.IndexSampler`), and rank 0 writes the files.

Guards: a non-finite loss or gradient stops training with :class:`TrainingDivergedError` before the
optimiser step, so no checkpoint or network file ever holds a non-finite weight; a ``checkpoint.pth``
that is empty, corrupt, of another kind or of another network, or one past ``num_iterations``, is an
error that suggests ``--no-resume``.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from ...core.robust import DeepGUM
from ...data.annotation_noise import AnnotationNoise
from ...utils.errors import UserError
from ...utils.fileio import atomic_save_torch, atomic_write_text
from ..models.network import NET_FORMAT, TrackerNet, net_state, non_finite_tensors, read_torch_file, save_net
from .config import DEFAULT_TRAIN, build_sources, check_train_config
from .data import IndexSampler, PairDataset
from .loss import BoxEstimationActor
from .robust import DEFAULT_ROBUST, outlier_summary, robust_loss

__all__ = ["train", "TrainingDivergedError"]


class TrainingDivergedError(UserError):
    """The loss or a gradient became NaN or infinite; nothing non-finite was saved."""


def _worker_init(_: int) -> None:
    # Loader workers only crop images; one thread each keeps them from fighting the training process.
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)


def _reduce_mean(value: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world_size
    return float(value)


def process_device(device: str, rank: int = 0, distributed: bool = False,
                   local_rank: Optional[int] = None) -> torch.device:
    """The device this training process works on.

    One process per GPU: under DDP on CUDA the GPU is the process's index on its own machine,
    ``local_rank`` (default ``$LOCAL_RANK``, which torchrun sets; else the global ``rank``, right only when
    every process is on one machine). The global rank would name a GPU that does not exist on the second
    machine of a multi-node run. Without DDP, or on the CPU, ``device`` as given.
    """
    if device == "cuda" and distributed:
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return torch.device(f"cuda:{local_rank}")
    return torch.device(device)


def train(cfg: Dict[str, Any], out_dir: str, *, resume: bool = True, rank: int = 0, world_size: int = 1,
          init_method: Optional[str] = None, backend: Optional[str] = None, device: str = "cpu",
          local_rank: Optional[int] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train the box estimator; see the module docstring.

    Args:
        cfg: training config (``net``, ``data``, ``train``); checked by :func:`check_train_config`.
        out_dir: output folder (created); an existing ``checkpoint.pth`` is resumed when ``resume``.
        rank, world_size, init_method, backend: torch.distributed settings (world_size 1: no DDP).
        device: "cpu" or "cuda".
        local_rank: this process's index on its machine, which picks its GPU (``cuda:<local_rank>``);
            default ``$LOCAL_RANK`` (set by torchrun), else ``rank`` (all processes on one machine).
    Returns:
        dict with ``iterations``, ``final_loss`` (mean of the last logged window), ``net_path``,
        ``seconds``.
    Raises:
        UserError for a bad config, missing data or an unusable checkpoint; TrainingDivergedError
        when the loss or a gradient is not finite.
    """
    check_train_config(cfg)
    tcfg = dict(DEFAULT_TRAIN, **cfg.get("train", {}))
    if tcfg["num_threads"]:
        torch.set_num_threads(int(tcfg["num_threads"]))
    distributed = world_size > 1
    if distributed and not dist.is_initialized():
        backend = backend or ("nccl" if device == "cuda" else "gloo")
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size)
    dev = process_device(device, rank, distributed, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    os.makedirs(out_dir, exist_ok=True)
    seed = int(tcfg["seed"])
    n_iter = int(tcfg["num_iterations"])

    torch.manual_seed(seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    net = TrackerNet(cfg.get("net")).to(dev)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=float(tcfg["lr"]),
                           weight_decay=float(tcfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m) for m in tcfg["lr_milestones"]], float(tcfg["lr_gamma"]))
    ckpt_path = os.path.join(out_dir, "checkpoint.pth")
    log_file = os.path.join(out_dir, "log.jsonl")
    net_path = os.path.join(out_dir, "net.pth")
    rcfg = dict(DEFAULT_ROBUST, **(cfg.get("robust") or {}))
    gum = DeepGUM(int(rcfg["period"]), int(rcfg["warmup"])) if rcfg["enabled"] else None
    start = 0
    if resume and os.path.isfile(ckpt_path):
        start = _resume(ckpt_path, net, opt, sched, dev, n_iter, gum)
        if rank == 0:
            log(f"[train] resumed from {ckpt_path} at iteration {start}")
    elif rank == 0:
        # A fresh start: an earlier run's log would otherwise be continued.
        if os.path.exists(log_file):
            os.remove(log_file)
        atomic_write_text(os.path.join(out_dir, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False))
    if start == n_iter:
        # Nothing left to train (a finished run resumed): make sure net.pth exists, report the last loss.
        if rank == 0 and not os.path.isfile(net_path):
            save_net(net_path, net.cpu(), extra={"iterations": n_iter})
        if distributed:
            dist.destroy_process_group()
        return {"iterations": n_iter, "start_iteration": start, "final_loss": _last_logged_loss(log_file),
                "net_path": net_path, "seconds": 0.0}

    actor = BoxEstimationActor(net)
    model = torch.nn.parallel.DistributedDataParallel(actor, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if distributed else actor
    batch = int(tcfg["batch_size"])
    noise = AnnotationNoise.from_config(cfg.get("data", {}).get("annotation_noise"))
    dataset = PairDataset(build_sources(cfg.get("data", {})), cfg.get("data", {}).get("processing"), seed=seed,
                          annotation_noise=noise)
    workers = int(tcfg["num_workers"])
    loader = DataLoader(dataset, batch_size=batch, sampler=IndexSampler(start, n_iter, batch, rank, world_size),
                        num_workers=workers, worker_init_fn=_worker_init if workers > 0 else None,
                        # "spawn", not fork: a forked worker can deadlock in OpenCV's thread pool when the
                        # parent process has already run cv2 code (seen with num_workers > 0 after an
                        # in-process run).
                        multiprocessing_context="spawn" if workers > 0 else None,
                        persistent_workers=workers > 0,
                        drop_last=True, pin_memory=dev.type == "cuda")
    net.train()
    t0 = time.time()
    window: List[float] = []
    robust_window: List[float] = []  # mean r of each iteration since the last log line
    flag_window: list = []  # (r, altered?) of the pairs since the last log line, with annotation noise
    final_loss = float("nan")
    last_saved = start
    it = start
    for it, sample in zip(range(start, n_iter), loader):
        gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + it * 101 + rank)
        inputs = (sample["ref_image"].to(dev).float(), sample["ref_box"].to(dev),
                  sample["test_image"].to(dev).float(), sample["test_box"].to(dev))
        if gum is None:
            loss = model(*inputs, generator=gen)
        else:
            loss = robust_loss(model(*inputs, generator=gen, residuals=rcfg), gum, robust_window,
                               sample["test_outlier"] if noise is not None else None, flag_window)
        # The mean over ranks, before any step: every rank sees the same value and stops together.
        loss_value = _reduce_mean(loss.detach(), world_size)
        if not math.isfinite(loss_value):
            _diverged(f"the loss is {loss_value}", it + 1, last_saved, ckpt_path, tcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg["grad_clip"]:
            norm = torch.nn.utils.clip_grad_norm_(net.estimator.parameters(), float(tcfg["grad_clip"]))
            if not bool(torch.isfinite(norm)):
                _diverged("the gradient is not finite", it + 1, last_saved, ckpt_path, tcfg)
        opt.step()
        sched.step()
        window.append(loss_value)
        done = it + 1
        if done % int(tcfg["log_interval"]) == 0 or done == n_iter:
            final_loss = sum(window) / len(window)
            if rank == 0:
                rec = {"iteration": done, "loss": final_loss, "lr": sched.get_last_lr()[0],
                       "seconds": round(time.time() - t0, 2)}
                if gum is not None:
                    rec["rho"] = gum.state.rho if gum.state is not None else 1.0
                    rec["mean_r"] = sum(robust_window) / max(len(robust_window), 1)
                    if gum.state is not None:
                        rec.update(outlier_summary(flag_window))
                log(f"[train] it {done}/{n_iter} loss {final_loss:.4f} lr {rec['lr']:.2e} {rec['seconds']:.1f}s")
                with open(log_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
            window, robust_window, flag_window = [], [], []
        if done % int(tcfg["checkpoint_interval"]) == 0 or done == n_iter:
            bad = non_finite_tensors(net.estimator.state_dict())
            if bad:
                _diverged(f"{len(bad)} weight tensor(s) became non-finite ({bad[0]})", done, last_saved, ckpt_path, tcfg)
            if rank == 0:
                _save_checkpoint(ckpt_path, net, opt, sched, done, cfg, gum)
            last_saved = done
            if distributed:
                dist.barrier()
    if rank == 0:
        save_net(net_path, net.cpu(), extra={"iterations": n_iter})
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"iterations": n_iter, "start_iteration": start, "final_loss": final_loss, "net_path": net_path,
            "seconds": time.time() - t0}


def _diverged(what: str, iteration: int, last_saved: int, ckpt_path: str, tcfg: Dict[str, Any]) -> None:
    saved = f"{ckpt_path} holds iteration {last_saved}" if last_saved else "no checkpoint was written"
    raise TrainingDivergedError(
        f"training diverged: {what} at iteration {iteration}; nothing was saved from it ({saved}); lower "
        f"train.lr (now {tcfg['lr']}) or train.grad_clip (now {tcfg['grad_clip']}), or check the data, then "
        f"resume (or start over with --no-resume)")


def _resume(ckpt_path: str, net: TrackerNet, opt, sched, dev: torch.device, n_iter: int,
            gum: Optional[DeepGUM] = None) -> int:
    """Load a training checkpoint into the network, optimiser, scheduler (and DeepGUM); returns its iteration.

    A checkpoint written without DeepGUM leaves EM to start afresh (r = 1 until its first fit)."""
    hint = "delete it, choose another --out, or pass --no-resume to start over"
    state = read_torch_file(ckpt_path, "a tracker training checkpoint", hint, map_location=dev)
    keys = ("net", "optimizer", "scheduler", "iteration")
    if not isinstance(state, dict) or not all(k in state for k in keys) or not isinstance(state["net"], dict) \
            or state["net"].get("format") != NET_FORMAT:
        raise UserError(f"{ckpt_path}: not a tracker training checkpoint (written by something else); {hint}")
    try:
        net.estimator.load_state_dict(state["net"]["estimator"])
        net.backbone.load_state_dict(state["net"]["backbone"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{ckpt_path}: a checkpoint of another network than this config's "
                        f"({' '.join(str(exc).split())[:120]}); {hint}") from None
    bad = non_finite_tensors(state["net"]["estimator"], state["net"]["backbone"])
    if bad:
        raise UserError(f"{ckpt_path}: {len(bad)} weight tensor(s) are not finite; {hint}")
    if gum is not None and state.get("robust") is not None:
        gum.load_state_dict(state["robust"])
    start = int(state["iteration"])
    if start > n_iter:
        raise UserError(f"{ckpt_path}: already trained {start} iterations, more than train.num_iterations = "
                        f"{n_iter}; raise train.num_iterations to at least {start}, or pass --no-resume to "
                        f"start over")
    return start


def _last_logged_loss(log_file: str) -> float:
    try:
        with open(log_file, encoding="utf-8") as fh:
            lines = [ln for ln in fh if ln.strip()]
        return float(json.loads(lines[-1])["loss"]) if lines else float("nan")
    except (OSError, ValueError, KeyError):
        return float("nan")


def _save_checkpoint(path: str, net: TrackerNet, opt, sched, iteration: int, cfg: Dict[str, Any],
                     gum: Optional[DeepGUM] = None) -> None:
    state = {
        "net": net_state(net),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "iteration": int(iteration),
        "train_config": cfg,
        "robust": gum.state_dict() if gum is not None else None,
    }
    # A crash while writing never leaves a half-written checkpoint behind.
    atomic_save_torch(state, path)
