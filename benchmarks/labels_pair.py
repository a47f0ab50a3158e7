"""The measured pair of notebook 03's Try-it 5: the plain DCGAN vs label smoothing + noisy labels, same settings
otherwise.

    python benchmarks/labels_pair.py      # about 15 minutes on a 2-core CPU; log: benchmarks/results/labels-cpu-*.log

Prints each run's mean losses and D's verdicts in epochs 1, 5 and 10, then `compare_runs`' table of both
(the figure goes to generated/labels/compare.png).
"""
import time

import torch

from utils.compare import compare_runs
from utils.config import TrainConfig
from utils.training import train

torch.set_num_threads(1)
common = dict(data="synthetic", image_size=32, max_images=4000, g_width=32, d_width=32, epochs=10, batch_size=64,
              device="cpu", amp="off")
runs = {"plain": {}, "smoothed": dict(real_label=0.9, fake_label=0.1, label_flip=0.05)}
for name, labels in runs.items():
    started = time.time()
    result = train(TrainConfig(**common, **labels, out=f"generated/labels/{name}"), progress=False)
    print(name, "seconds", round(time.time() - started), flush=True)
    for epoch in (1, 5, 10):
        steps = [s for s in result.history["steps"] if s["epoch"] == epoch]
        mean = {k: round(sum(s[k] for s in steps) / len(steps), 3) for k in ("loss_d", "loss_g", "d_real", "d_fake")}
        print(name, "epoch", epoch, mean, flush=True)
compare_runs([f"generated/labels/{name}" for name in runs]).savefig("generated/labels/compare.png")
