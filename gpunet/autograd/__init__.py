"""Define-by-run automatic differentiation: Tensor, Node, the tape and `no_grad` (see docs/autograd.md).

    x = gpunet.tensor(np.ones((2, 3)), requires_grad=True)
    loss = (x * x).sum()
    loss.backward()          # x.grad == 2 * x
"""
from gpunet.autograd.core import (Node, Tensor, array_module, as_tensor, backward, enable_grad, is_grad_enabled,
                                  no_grad, tensor)
from gpunet.autograd.tensor_ops import cat, concatenate, stack, sum_to

__all__ = ["Tensor", "Node", "tensor", "as_tensor", "backward", "no_grad", "enable_grad", "is_grad_enabled",
           "concatenate", "cat", "stack", "sum_to", "array_module"]
