"""Training of the promptable ResEnc U-Net with dynamic prompt simulation, and the data tools.

Modules: config (the TrainConfig dataclass and CLI), data (cases, samples, loader), simulate (clicks on
the model's own errors, the loss), train (the loop, checkpoints, DDP), validate (in-process evaluation
harness), bench (`python -m training.bench`); convert / prepare_data build the npz data.
"""
