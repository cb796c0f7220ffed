"""Training loop of the box estimator: data sources from a config, checkpoint/resume, DDP.

Config (a dict, usually a YAML file under ``configs/tracking/``)::

    net:   TrackerNet config (backbone, estimator, loss) -- see models.network.DEFAULT_NET_CONFIG
    data:
      processing: overrides of train.data.DEFAULT_PROCESSING
      sources:    list of {type: synthetic | coco | dataset, weight: float, ...}
    train: batch_size, num_iterations, lr, weight_decay, lr_milestones, lr_gamma, grad_clip,
           num_workers, checkpoint_interval, log_interval, seed, num_threads

Source types:
  synthetic  num_sequences, first_seed, config (SyntheticConfig fields), background_dir (optional
             folder of real images used as backgrounds)
  coco       ann_file, image_dir (each instance is a one-frame sequence)
  dataset    name, root, plus keyword arguments of ``ebm_refine.tracking.datasets.load_dataset``
             (TrackingNet TRAIN_i, LaSOT, GOT-10k, folder, ...)

Paths may use ``${EBM_SHARED_DATA}`` (default ``<repo>/../shared/data``) and other environment variables.

Output folder: ``checkpoint.pth`` (network + optimizer + scheduler + iteration, written every
``checkpoint_interval`` iterations and at the end, atomically), ``net.pth`` (the self-contained network
the tracker loads), ``log.jsonl`` (one line per logged iteration), ``config.yaml``.

Distributed: with ``world_size > 1`` each process runs :func:`train` with its ``rank``; the network is
wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on GPU), each rank reads its own share of the
sample stream (:class:`~ebm_refine.tracking.train.data.IndexSampler`), and rank 0 writes the files.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from ...utils.resources import shared_data_dir
from ..models.network import TrackerNet, save_net
from ..synthetic import SyntheticConfig, SyntheticDataset
from .data import FileSequence, IndexSampler, PairDataset, coco_sequences

__all__ = ["DEFAULT_TRAIN", "train", "build_sources", "load_train_config"]


DEFAULT_TRAIN: Dict[str, Any] = {
    "batch_size": 8,
    "num_iterations": 1000,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_milestones": [],
    "lr_gamma": 0.2,
    "grad_clip": 10.0,
    "num_workers": 2,
    "checkpoint_interval": 100,
    "log_interval": 10,
    "seed": 0,
    "num_threads": None,
}


def _expand(path: str) -> str:
    """``~`` and ``$VARS`` expanded (``$EBM_SHARED_DATA`` defaults to the checkout's ``../shared/data``);
    relative paths stay relative to the current directory."""
    shared = shared_data_dir()
    if shared is not None:
        os.environ.setdefault("EBM_SHARED_DATA", str(shared))
    return os.path.expanduser(os.path.expandvars(str(path)))


def load_train_config(path: str) -> Dict[str, Any]:
    """Read a training YAML (``_base_`` chains allowed, as for tracker parameters)."""
    from ..tracker.params import load_yaml

    return load_yaml(path)


def build_sources(data_cfg: Dict[str, Any]) -> List[Tuple[Any, float]]:
    """(indexable of sequences, weight) per configured source."""
    out = []
    for src in data_cfg.get("sources", []):
        kind = src.get("type")
        weight = float(src.get("weight", 1.0))
        if kind == "synthetic":
            syn = dict(src.get("config", {}))
            bdir = src.get("background_dir")
            if bdir:
                files = sorted(glob.glob(os.path.join(_expand(bdir), "*.jpg")) + glob.glob(os.path.join(_expand(bdir), "*.png")))
                if not files:
                    raise FileNotFoundError(f"synthetic source: no .jpg/.png backgrounds in {_expand(bdir)}")
                syn["background_images"] = files
            out.append((SyntheticDataset(int(src.get("num_sequences", 1000)), int(src.get("first_seed", 0)),
                                         SyntheticConfig(**syn)), weight))
        elif kind == "coco":
            out.append((coco_sequences(_expand(src["ann_file"]), _expand(src["image_dir"]),
                                       float(src.get("min_size", 16.0))), weight))
        elif kind == "dataset":
            from ..datasets import load_dataset

            kwargs = {k: v for k, v in src.items() if k not in ("type", "weight", "name", "root")}
            seqs = load_dataset(src["name"], _expand(src["root"]), **kwargs)
            out.append(([FileSequence(s) for s in seqs if s.has_full_ground_truth], weight))
        else:
            raise ValueError(f"unknown data source type {kind!r} (expected synthetic, coco or dataset)")
    return out


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


def train(cfg: Dict[str, Any], out_dir: str, *, resume: bool = True, rank: int = 0, world_size: int = 1,
          init_method: Optional[str] = None, backend: Optional[str] = None, device: str = "cpu",
          log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train the box estimator; see the module docstring.

    Args:
        cfg: training config (``net``, ``data``, ``train``).
        out_dir: output folder (created); an existing ``checkpoint.pth`` is resumed when ``resume``.
        rank, world_size, init_method, backend: torch.distributed settings (world_size 1: no DDP).
        device: "cpu" or "cuda" (with DDP, rank r uses cuda:r).
    Returns:
        dict with ``iterations``, ``final_loss`` (mean of the last logged window), ``net_path``,
        ``seconds``.
    """
    tcfg = dict(DEFAULT_TRAIN, **cfg.get("train", {}))
    if tcfg["num_threads"]:
        torch.set_num_threads(int(tcfg["num_threads"]))
    distributed = world_size > 1
    if distributed and not dist.is_initialized():
        backend = backend or ("nccl" if device == "cuda" else "gloo")
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size)
    dev = torch.device(f"cuda:{rank}" if device == "cuda" and distributed else device)
    os.makedirs(out_dir, exist_ok=True)
    seed = int(tcfg["seed"])

    torch.manual_seed(seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    net = TrackerNet(cfg.get("net")).to(dev)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=float(tcfg["lr"]),
                           weight_decay=float(tcfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m) for m in tcfg["lr_milestones"]], float(tcfg["lr_gamma"]))
    ckpt_path = os.path.join(out_dir, "checkpoint.pth")
    start = 0
    if resume and os.path.isfile(ckpt_path):
        state = torch.load(ckpt_path, map_location=dev, weights_only=False)
        net.estimator.load_state_dict(state["net"]["estimator"])
        net.backbone.load_state_dict(state["net"]["backbone"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["iteration"])
        if rank == 0:
            log(f"[train] resumed from {ckpt_path} at iteration {start}")
    elif rank == 0:
        with open(os.path.join(out_dir, "config.yaml"), "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)

    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if distributed else net
    n_iter = int(tcfg["num_iterations"])
    batch = int(tcfg["batch_size"])
    dataset = PairDataset(build_sources(cfg.get("data", {})), cfg.get("data", {}).get("processing"), seed=seed)
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
    final_loss = float("nan")
    log_file = os.path.join(out_dir, "log.jsonl")
    it = start
    for it, sample in zip(range(start, n_iter), loader):
        gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + it * 101 + rank)
        loss = model(sample["ref_image"].to(dev).float(), sample["ref_box"].to(dev),
                     sample["test_image"].to(dev).float(), sample["test_box"].to(dev), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(net.estimator.parameters(), float(tcfg["grad_clip"]))
        opt.step()
        sched.step()
        window.append(_reduce_mean(loss.detach(), world_size))
        done = it + 1
        if done % int(tcfg["log_interval"]) == 0 or done == n_iter:
            final_loss = sum(window) / len(window)
            if rank == 0:
                rec = {"iteration": done, "loss": final_loss, "lr": sched.get_last_lr()[0],
                       "seconds": round(time.time() - t0, 2)}
                log(f"[train] it {done}/{n_iter} loss {final_loss:.4f} lr {rec['lr']:.2e} {rec['seconds']:.1f}s")
                with open(log_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
            window = []
        if done % int(tcfg["checkpoint_interval"]) == 0 or done == n_iter:
            if rank == 0:
                _save_checkpoint(ckpt_path, net, opt, sched, done, cfg)
            if distributed:
                dist.barrier()
    net_path = os.path.join(out_dir, "net.pth")
    if rank == 0:
        save_net(net_path, net.cpu(), extra={"iterations": n_iter})
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"iterations": n_iter, "start_iteration": start, "final_loss": final_loss, "net_path": net_path,
            "seconds": time.time() - t0}


def _save_checkpoint(path: str, net: TrackerNet, opt, sched, iteration: int, cfg: Dict[str, Any]) -> None:
    state = {
        "net": {"format": "ebm_refine.tracker_net/1", "config": copy.deepcopy(net.config),
                "backbone": net.backbone.state_dict(), "estimator": net.estimator.state_dict()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "iteration": int(iteration),
        "train_config": cfg,
    }
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash while writing never leaves a half-written checkpoint behind
