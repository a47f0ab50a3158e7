"""utils: the package behind the anime-face DCGAN notebooks.

One job per module:
    config       TrainConfig, every knob with defaults and validation
    data         datasets (Kaggle, folders, zips, URLs) decoded once into a cached uint8 tensor
    synthetic    procedurally drawn anime faces: the offline default data
    models       the DCGAN generator and discriminator
    augment      DiffAugment, an option on top of the improved recipe
    training     the training step and loop; `python -m utils.train` is its CLI
    run          the run folder: its name, lock, checkpoints, history, and what may change when it continues
    choose       which run notebooks 04-06 work on: the main run of their settings, unless the learner names another
    estimate     how long training and FID take on this machine, measured here, before a long cell starts
    compare      several runs side by side: grids, curves, FID and the settings that differ
    distributed  several GPUs with torch.distributed
    visualize    sample grids and loss plots;  gif: the per-epoch GIF (`python -m utils.gif RUN_DIR`)
    metrics      FID
    explore      latent walks, nearest real neighbours, ranking samples by D
    generate     faces to PNG files, a face by its name, morphs (`python -m utils.generate RUN_DIR`)
    explorer     sliders that redraw a grid of faces in a notebook, a static grid where widgets cannot show
    export       the generator as one TorchScript file that needs no `utils` (`python -m utils.export RUN_DIR`)
    files        atomic, durable writes (the old file or the new one, never half-written) and PyTorch files read as
                 data only (nothing in them runs)
    errors       UserError: one message saying what happened and what to do, no traceback (CLI and notebooks)
    environment  device, mixed precision and memory layout per machine
    urls         which data strings are URLs, and a URL with its password or token hidden (messages, stored files)
"""

__version__ = "0.1.0"
