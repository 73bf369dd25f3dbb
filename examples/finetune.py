"""Fine-tune a Keras MobileNet in PyTorch, on one process or many (DistributedDataParallel).

    python examples/finetune.py --data path/to/imagefolder --model mobilenet_v2 \
        --weights imagenet --freeze-up-to block_12_add --epochs 3 --output runs/v2
    torchrun --nproc_per_node 2 examples/finetune.py --synthetic 64 --model mobilenet_v3_small

`--data` is a torchvision ImageFolder (one folder per class); `--synthetic N` uses N random
images instead (for smoke tests). Checkpoints are safetensors with the model's config
(`<output>/epoch_<k>.safetensors`): load them with `weights=` or take them back to Keras with
`python -m convert --to keras`. Under torchrun each process trains on its shard (gloo on CPU,
nccl on GPU) and rank 0 writes checkpoints and shows the progress bar.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import torch_mobilenets as tm
from torch_mobilenets import save_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="an ImageFolder directory")
    source.add_argument("--synthetic", type=int, metavar="N", help="N random images instead")
    parser.add_argument(
        "--model",
        default="mobilenet_v3_small",
        choices=["mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"],
    )
    parser.add_argument(
        "--weights",
        default=None,
        help='"imagenet", a Keras file or a .safetensors (default: random)',
    )
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--classes",
        type=int,
        default=None,
        help="the new number of classes (default: the ImageFolder's)",
    )
    parser.add_argument(
        "--freeze-up-to",
        default=None,
        metavar="LAYER",
        help="Keras layer name: it and everything before it stay fixed",
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="stop each epoch after N steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("runs/finetune"))
    return parser.parse_args(argv)


def dataset(args, family):
    """(dataset, number of classes); images scaled as the family's Keras preprocess_input."""
    if args.synthetic:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.rand(args.synthetic, 3, args.size, args.size, generator=generator) * 255
        labels = torch.randint(0, args.classes or 2, (args.synthetic,), generator=generator)
        return TensorDataset(preprocess(family, pixels), labels), args.classes or 2
    import torchvision.transforms.v2 as T
    from torchvision.datasets import ImageFolder

    transform = T.Compose(
        [
            T.PILToTensor(),
            T.Resize((args.size, args.size)),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32),
            T.Lambda(lambda x: preprocess(family, x)),
        ]
    )
    folder = ImageFolder(args.data, transform=transform)
    return folder, args.classes or len(folder.classes)


def preprocess(family, pixels):
    module = {"mobilenet": tm.mobilenet_v1, "mobilenet_v2": tm.mobilenet_v2}.get(
        family, tm.mobilenet_v3
    )
    return module.preprocess_input(pixels)


def build_model(args, classes):
    builder = tm.FAMILIES[args.model]
    kwargs = dict(alpha=args.alpha, weights=args.weights)
    if args.model in ("mobilenet", "mobilenet_v2"):
        kwargs["input_shape"] = (3, args.size, args.size)
    model = builder(classifier_activation=None, **kwargs)
    model.reset_classifier(classes)
    if args.freeze_up_to:
        model.freeze(up_to=args.freeze_up_to)
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    device = torch.device("cpu")
    if distributed:
        rank = int(os.environ["RANK"])
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    else:
        rank = 0
        if torch.cuda.is_available():
            device = torch.device("cuda")
    torch.manual_seed(0)

    data, classes = dataset(args, args.model)
    model = build_model(args, classes).to(device)
    trained = model
    if distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = DistributedSampler(data, shuffle=True) if distributed else None
    loader = DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=True,
    )
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=0.9
    )
    if rank == 0:
        args.output.mkdir(parents=True, exist_ok=True)

    for epoch in range(1, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        trained.train()
        steps = min(len(loader), args.steps or len(loader))
        progress = tqdm(total=steps, desc=f"epoch {epoch}", disable=rank != 0)
        for step, (images, labels) in enumerate(loader, start=1):
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(trained(images), labels)
            loss.backward()
            optimizer.step()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if step >= steps:
                break
        progress.close()
        if rank == 0:
            save_checkpoint(model.eval(), args.output / f"epoch_{epoch}.safetensors")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
