"""Many-to-many pieces: the time-distributed Linear, the masked per-step cross-entropy, variable-length masks,
and the encoder-decoder with teacher forcing and greedy decoding."""
import numpy as np
import pytest

import gpunet
from gpunet import nn

torch = pytest.importorskip("torch")


def test_linear_maps_the_last_axis_of_a_sequence_like_torch(rng, backend):
    """Time-distributed: the same weights at every step, PyTorch's nn.Linear on (N, T, F)."""
    ours = nn.Linear(4, 3, dtype=np.float64)
    x, dy = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    t = gpunet.tensor(x, requires_grad=True)
    y = ours(t)
    (y * gpunet.tensor(dy)).sum().backward()
    tl = torch.nn.Linear(4, 3).double()
    tl.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tl(tx)
    (ty * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(y.data, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, tl.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.bias.grad, tl.bias.grad.numpy(), atol=1e-12)
    ref, m = nn.Linear(4, 3), nn.Linear(4, 3, backend=backend)
    m.load_state_dict(ref.state_dict())
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(backend.asnumpy(m(backend.asarray(x32))), ref(x32), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"Linear: expected input of shape \(N, 4\), got \(2, 5, 3\)"):
        ours(np.zeros((2, 5, 3)))
