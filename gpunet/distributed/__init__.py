"""Synchronous data-parallel training over MPI (mpi4py), ChainerMN's way (docs/distributed.md).

    from gpunet import distributed
    comm = distributed.init(timeout=300)          # rank, size; launched by `mpiexec -n K python train.py`
    train = DataLoader(x, y, batch_size=64, shard=(comm.rank, comm.size), backend=be)   # 64 = global batch
    Trainer(model, opt, comm=comm).fit(train, epochs=5)

The Trainer checks that every rank built the same model, broadcasts rank 0's weights and buffers, and
after each backward sums the gradients in a few flat buckets (gpunet.distributed.gradients).
`convert_sync_batchnorm(model, comm)` (or `nn.BatchNorm2d(..., comm=comm)`) normalises with the global
batch's statistics (gpunet.distributed.sync_bn).
"""
from gpunet.distributed.communicator import Communicator, DistributedError, init
from gpunet.distributed.gradients import DEFAULT_BUCKET_BYTES, GradientReducer
from gpunet.distributed.sync_bn import SyncBatchNormTrain, convert_sync_batchnorm

__all__ = ["Communicator", "DistributedError", "GradientReducer", "DEFAULT_BUCKET_BYTES", "SyncBatchNormTrain",
           "convert_sync_batchnorm", "init"]
