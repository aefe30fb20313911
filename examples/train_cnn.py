"""A plain PyTorch training script, written the way a course lab is: a small CNN on the digits.

Nothing in it knows hpsearch except one printed JSON line per epoch. Run it by hand:

    python examples/train_cnn.py --lr 0.01 --epochs 5

Tune it with hpsearch as a command (README, "Tune your own training code"):

    hpsearch grid --study cnn -- python examples/train_cnn.py --lr {lr} --weight-decay {weight_decay} \\
        --batch-size {batch_size} --momentum {momentum} --epochs {epochs} --seed {seed} --split {split}

or as a function, in the same process (``objective`` below maps hp onto the same flags):

    hpsearch grid --study cnn-fn --objective examples/train_cnn.py:objective
"""
import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """Two 3x3 convolutions and a linear head, for 1x8x8 images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8 -> 4x4
        return self.fc(x.flatten(1))


def digits_splits(seed=0):
    """Train, validation and test tensors: 60/20/20, stratified, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    return [(torch.tensor(a), torch.tensor(b)) for a, b in ((x_train, y_train), (x_val, y_val), (x_test, y_test))]


def shift(images):
    """Augmentation: each image moved by up to one pixel in each direction (zero padding)."""
    padded = F.pad(images, (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2,))
    return padded[:, :, dy:dy + 8, dx:dx + 8]


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def train(args, report=None):
    """Train with ``args``; after each epoch call ``report(epoch, **metrics)`` or print the metrics as JSON."""
    torch.manual_seed(args.seed)
    (x_train, y_train), val, test = digits_splits()
    x_eval, y_eval = test if args.split == "test" else val
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    model = Net().to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for x, y in loader:
            x, y = shift(x).to(args.device), y.to(args.device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(x), count + len(x)
        scheduler.step()
        val_loss, val_accuracy = evaluate(model, x_eval.to(args.device), y_eval.to(args.device))
        metrics = {"train_loss": total / count, "val_loss": val_loss, "val_accuracy": val_accuracy,
                   "val_examples": len(y_eval)}  # optional: the report's ± for the accuracy
        if report is not None:
            report(epoch, **metrics)
        else:
            print(json.dumps({"epoch": epoch, **metrics}), flush=True)  # the one line hpsearch reads
    return model


def parse(argv=None):
    parser = argparse.ArgumentParser(description="A small CNN on the digits (8x8 images).")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=["val", "test"], default="val", help="evaluate on validation or test")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def objective(hp):
    """hpsearch --objective examples/train_cnn.py:objective: the same training, called with hpsearch's hp."""
    args = argparse.Namespace(lr=hp.lr, weight_decay=hp.weight_decay, batch_size=hp.batch_size, momentum=hp.momentum,
                              epochs=hp.epochs, seed=hp.seed, split=hp.split, device=hp.device)
    train(args, hp.report)


if __name__ == "__main__":
    train(parse())
