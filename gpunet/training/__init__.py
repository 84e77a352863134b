"""Training: the Trainer loop, evaluation, and whole runs from a config (what `gpunet train` does).

    from gpunet.training import fit
    result = fit("digits", epochs=5, device="cpu")        # returns RunResult(metrics, history, model, ...)

    from gpunet.training import Trainer, evaluate           # your own model, optimizer and loaders
    trainer = Trainer(model, optimizer, scheduler=None, checkpoint_path="run/checkpoint.npz")
    history = trainer.fit(train_loader, val_loader, epochs=10)
"""
from gpunet.training.early_stopping import EarlyStopping
from gpunet.training.progress import Progress
from gpunet.training.recipe import (DEFAULTS, OPTIMIZERS, SCHEDULES, RunResult, TrainConfig, build_optimizer,
                                 build_scheduler, default_out_dir, fit, run)
from gpunet.training.tensorboard import TensorBoardLogger
from gpunet.training.trainer import Trainer, TrainingError, evaluate

__all__ = ["EarlyStopping", "Trainer", "TrainingError", "evaluate", "Progress", "TensorBoardLogger", "TrainConfig", "RunResult", "run", "fit",
           "build_optimizer", "build_scheduler", "default_out_dir", "DEFAULTS", "OPTIMIZERS", "SCHEDULES"]
