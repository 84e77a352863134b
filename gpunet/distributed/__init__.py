"""Synchronous data-parallel training over MPI (mpi4py), ChainerMN's way (docs/distributed.md).

    from gpunet import distributed
    comm = distributed.init(timeout=300)          # rank, size; launched by `mpiexec -n K python train.py`
    train = DataLoader(x, y, batch_size=64, shard=(comm.rank, comm.size), backend=be)   # 64 = global batch
    Trainer(model, opt, comm=comm).fit(train, epochs=5)

The Trainer checks that every rank built the same model, broadcasts rank 0's weights and buffers, and
after each backward sums the gradients in a few flat buckets (gpunet.distributed.gradients).
"""
from gpunet.distributed.communicator import Communicator, DistributedError, init
from gpunet.distributed.gradients import DEFAULT_BUCKET_BYTES, GradientReducer

__all__ = ["Communicator", "DistributedError", "GradientReducer", "DEFAULT_BUCKET_BYTES", "init"]
