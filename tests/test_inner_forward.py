"""make_forward: running a model with a parameter dict swaps in only what differs from the model's own tensors."""
import torch
from torch.func import functional_call

from fewseg.algorithms.inner_loop import detached, make_forward


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = torch.nn.Conv2d(3, 4, 1).requires_grad_(False)
        self.norm = torch.nn.BatchNorm2d(4).eval()
        self.head = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.norm(self.frozen(x)))


def test_forward_gives_functional_calls_numbers_and_gradients_for_new_and_own_tensors():
    torch.manual_seed(0)
    net = Net()
    buffers = dict(net.named_buffers())
    forward = make_forward(net, buffers)
    x = torch.rand(2, 3, 5, 5)
    params = {n: detached(p) for n, p in net.named_parameters()}
    assert params["frozen.weight"] is net.frozen.weight and params["head.bias"] is not net.head.bias
    params["head.weight"] = (net.head.weight * 2).detach().requires_grad_(True)  # a new tensor: swapped in
    params["frozen.bias"] = params["frozen.bias"] + 1.0  # new values for a frozen tensor: swapped in
    out = forward(params, x)
    ref = functional_call(net, {**params, **buffers}, (x,))
    assert torch.allclose(out, ref)
    (g,) = torch.autograd.grad(out.sum(), params["head.weight"])
    (g_ref,) = torch.autograd.grad(functional_call(net, {**params, **buffers}, (x,)).sum(), params["head.weight"])
    assert torch.allclose(g, g_ref)
    # the model's own parameters (which need gradients) are used as they are, and the gradient reaches them
    own = dict(net.named_parameters())
    forward(own, x).sum().backward()
    assert net.head.weight.grad is not None and net.frozen.weight.grad is None
    # after a call the model holds its own tensors again
    assert net.head.weight is own["head.weight"] and torch.equal(net.frozen.bias, own["frozen.bias"])


def test_forward_with_tied_weights_moves_both_names():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False))
    net[1].weight = net[0].weight  # one tensor, two names
    forward = make_forward(net, {})
    x = torch.rand(2, 3)
    w = torch.randn(3, 3)
    out = forward({"0.weight": w}, x)
    assert torch.allclose(out, x @ w.T @ w.T)
