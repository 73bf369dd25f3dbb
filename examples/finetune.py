"""Fine-tune a Keras MobileNet in PyTorch, on one process or many (DistributedDataParallel).

    python examples/finetune.py --data path/to/imagefolder --model mobilenet_v2 \
        --weights imagenet --freeze-up-to block_12_add --epochs 3 --output runs/v2
    torchrun --nproc_per_node 2 examples/finetune.py --synthetic 64 --model mobilenet_v3_small

`--weights` takes "imagenet", an official Keras file with the top or without it (the
`_no_top.h5` files Keras' transfer learning starts from: the model gets its family's top, fresh,
with `reset_classifier`), your own Keras model (`.keras`, `.h5`: its classifier is resized, or a
head added where it ends at features), or a `.safetensors`. `--data` is a torchvision
ImageFolder (one folder per class); `--synthetic N` uses N random images instead (for smoke
tests). Checkpoints are safetensors with the model's config
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
from torch_mobilenets.models.heads import output_activation
from torch_mobilenets.models.preprocessing import preprocesses_input


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="an ImageFolder directory")
    source.add_argument("--synthetic", type=int, metavar="N", help="N random images instead")
    parser.add_argument(
        "--model",
        default=None,
        choices=["mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"],
        help="the family to build (default mobilenet_v3_small; with --weights FILE, the file's)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help='"imagenet", or a file: an official Keras file with or without the top '
        "(`_no_top.h5`), your own Keras model (.keras, .h5), or a .safetensors "
        "(default: random)",
    )
    parser.add_argument("--alpha", type=float, default=None, help="width (default 1.0)")
    parser.add_argument(
        "--size", type=int, default=None, help="input size (default: the model's, else 224)"
    )
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


def dataset(args, model):
    """(dataset, number of classes); images at the model's size, in [0, 255] where the model
    scales pixels itself (V3's rescaling, a user's preprocessing layers), else scaled as
    Keras' preprocess_input for the MobileNets ([-1, 1])."""
    size = input_size(model, args.size)
    scale = not preprocesses_input(model)
    if args.synthetic:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.rand(args.synthetic, 3, *size, generator=generator) * 255
        labels = torch.randint(0, args.classes or 2, (args.synthetic,), generator=generator)
        return TensorDataset(preprocess(pixels, scale), labels), args.classes or 2
    import torchvision.transforms.v2 as T
    from torchvision.datasets import ImageFolder

    transform = T.Compose(
        [
            T.PILToTensor(),
            T.Resize(size),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32),
            T.Lambda(lambda x: preprocess(x, scale)),
        ]
    )
    folder = ImageFolder(args.data, transform=transform)
    return folder, args.classes or len(folder.classes)


def preprocess(pixels, scale):
    return tm.mobilenet_v2.preprocess_input(pixels) if scale else pixels


def input_size(model, size=None):
    """(rows, cols): the model's static size, else `size`, else 224."""
    _, rows, cols = model.input_shape
    return (rows, cols) if rows and cols else (size or 224, size or 224)


def base_model(args):
    """The model to start from, before its head is reset: built (random or "imagenet"
    weights), or loaded from `--weights FILE`. Official architectures give logits (no
    softmax) and, for V1/V2, a static size (`--size`)."""
    if args.weights in (None, "imagenet"):
        family = args.model or "mobilenet_v3_small"
        kwargs = dict(alpha=args.alpha or 1.0, weights=args.weights)
        if family in ("mobilenet", "mobilenet_v2"):
            kwargs["input_shape"] = (3, args.size or 224, args.size or 224)
        return tm.FAMILIES[family](classifier_activation=None, **kwargs)
    model = tm.load_model(args.weights)
    config = model.config
    family = config["family"]
    if family not in tm.FAMILIES:  # the user's own graph, as it is
        if args.size and input_size(model, args.size) != (args.size, args.size):
            raise SystemExit(
                f"{args.weights}: the model takes {input_size(model)} images; --size "
                f"{args.size} does not fit it"
            )
        return model
    if args.model and args.model != family:
        raise SystemExit(f"{args.weights} holds a {family} model, not {args.model}")
    changes = {"classifier_activation": None} if config.get("include_top") else {}
    if family in ("mobilenet", "mobilenet_v2"):  # a static size, as the builders have it
        size = (args.size, args.size) if args.size else input_size(model)
        if tuple(model.input_shape[1:]) != size:
            changes["input_shape"] = (3, *size)
    if not changes:
        return model
    rebuilt = tm.keras_io.build({**config, **changes})
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def with_fresh_head(model, args, classes):
    """`classes` logits on the base (`reset_classifier`: a model without a classifier, such as
    a `_no_top.h5` file's, gets its family's top), frozen up to `--freeze-up-to`."""
    model.reset_classifier(classes)
    if args.freeze_up_to:
        model.freeze(up_to=args.freeze_up_to)
    return model


def loss_function(model):
    """Cross-entropy on what the head gives: logits, or a user's softmax probabilities."""
    kind = output_activation(model)
    if kind == "linear":
        return F.cross_entropy
    if kind == "softmax":
        return lambda probs, labels: F.nll_loss(probs.clamp_min(1e-7).log(), labels)
    raise SystemExit(f"the model's head ends with {kind}; fine-tuning here needs logits or softmax")


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

    base = base_model(args)
    data, classes = dataset(args, base)
    model = with_fresh_head(base, args, classes).to(device)
    loss_of = loss_function(model)
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
            loss = loss_of(trained(images), labels)
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
