"""attention: the Triton flash attention against the PyTorch reference (SDPA), forward and backward.

Under the Triton interpreter tl.dot runs on the CPU, slowly: shapes are tiny and few.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastfields import BackendUnavailable
from fastfields.ops.attention import attention
from fastfields.reference.attention import attention_reference

from conftest import backend_params

BACKENDS = [p for p in backend_params() if p.values[0] == "triton"]
ON_INTERPRETER = not torch.cuda.is_available()


def make_qkv(B=1, H=2, Lq=33, Lk=17, Dh=16, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, Dh, generator=gen, dtype=torch.float64) for L in (Lq, Lk, Lk))
    return tuple(t.to(device=device, dtype=dtype) for t in (q * 1.5, k, v))


def run(fn, q, k, v, grad_seed=1, **kwargs):
    """Output and gradients (q, k, v) for a fixed random upstream gradient."""
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad.to(out.device, out.dtype)))


def assert_matches_reference(backend, q, k, v, atol=2e-5, rtol=1e-4, **kwargs):
    got = run(attention, q, k, v, backend=backend, **kwargs)
    want = run(attention_reference, q, k, v, **kwargs)
    for name, g, w in zip(("output", "grad q", "grad k", "grad v"), got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def eager_in_dtype(q, k, v, scale=None):
    """The attention models write by hand, all in q's dtype: the baseline of the half-precision rule."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


# ---------------------------------------------------------------------------------------
# The reference is softmax(q k^T * scale) v.


@pytest.mark.parametrize("Lq, Lk, scale", [(5, 5, None), (7, 3, None), (1, 9, 0.3)])
def test_reference_is_softmax_attention(Lq, Lk, scale):
    q, k, v = make_qkv(B=2, Lq=Lq, Lk=Lk, Dh=8, dtype=torch.float64)
    want = run(eager_in_dtype, q, k, v, scale=scale)
    for got, expected in zip(run(attention, q, k, v, scale=scale, backend="torch"), want):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)


def test_reference_gradcheck():
    q, k, v = (t.requires_grad_(True) for t in make_qkv(B=1, H=1, Lq=3, Lk=4, Dh=2, dtype=torch.float64))
    assert torch.autograd.gradcheck(attention_reference, (q, k, v), eps=1e-6, atol=1e-6)
    with sdpa_kernel(SDPBackend.MATH):  # the kernel with a double backward
        assert torch.autograd.gradgradcheck(attention_reference, (q, k, v), eps=1e-6, atol=1e-6)


def test_auto_is_sdpa_unless_asked(monkeypatch):
    """auto = SDPA everywhere until a GPU benchmark shows the Triton kernel wins; the env var can opt in."""
    from fastfields.ops.attention import _resolve

    assert _resolve("auto", torch.device("cpu")) == "torch"
    if BACKENDS and not any(mark.name == "skip" for mark in BACKENDS[0].marks):
        monkeypatch.setenv("FASTFIELDS_BACKEND", "triton")
        assert _resolve("auto", torch.device("cpu")) == "triton"


# ---------------------------------------------------------------------------------------
# Triton against the reference.


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(B=1, H=2, Lq=33, Lk=17, Dh=16),  # cross-attention, neither length a multiple of the block
        dict(B=2, H=1, Lq=20, Lk=20, Dh=32),  # self-attention
        dict(B=1, H=1, Lq=1, Lk=40, Dh=24),  # one query; head dim padded to 32 with a mask
        dict(B=1, H=1, Lq=18, Lk=1, Dh=8),  # one key; head dim padded to 16
    ],
    ids=lambda s: "x".join(f"{k}{v}" for k, v in s.items()),
)
def test_matches_reference(backend, device, shape):
    assert_matches_reference(backend, *make_qkv(device=device, **shape))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_custom_scale(backend, device):
    assert_matches_reference(backend, *make_qkv(Lq=9, Lk=21, device=device), scale=0.7)


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[1] == "cuda"])
@pytest.mark.parametrize("Dh", [64, 80, 128])
@pytest.mark.parametrize("Lq, Lk", [(3072, 257), (1000, 1025), (129, 129)])
def test_lrm_shapes_on_gpu(backend, device, Dh, Lq, Lk):
    """LRM's cross- (triplane tokens x image tokens) and self-attention shapes, with the real tile sizes."""
    assert_matches_reference(backend, *make_qkv(B=2, H=4, Lq=Lq, Lk=Lk, Dh=Dh, device=device), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_inputs_and_output_layout(backend, device):
    """Heads split from [B, L, H, Dh] projections (views, no copies), and q, k, v sliced from one packed tensor."""
    B, L, H, Dh = 1, 19, 2, 16
    qkv = torch.randn(B, L, 3, H, Dh, device=device)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    assert_matches_reference(backend, q, k, v)

    q = q.detach().requires_grad_(True)
    out = attention(q, k, v, backend=backend)
    assert out.transpose(1, 2).is_contiguous()  # merging the heads back to [B, L, H * Dh] is a view
    out.sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("Lq, Lk", [(0, 5), (4, 0)])
def test_empty(backend, device, Lq, Lk):
    """No queries: an empty output. No keys: zeros, as SDPA, and zero gradients."""
    q, k, v = make_qkv(Lq=Lq, Lk=Lk, device=device)
    got = run(attention, q, k, v, backend=backend)
    want = run(attention_reference, q, k, v)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.count_nonzero(g) == 0 and torch.count_nonzero(w) == 0


def _half_dtypes():
    bf16 = pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(
            ON_INTERPRETER, reason="the Triton interpreter multiplies bfloat16 bit patterns in tl.dot (triton-lang/triton#11584)"
        ),
    )
    return [torch.float16, bf16]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", _half_dtypes())
def test_half_precision(backend, device, dtype):
    """The flash-attention rule: our error against a float32 reference is at most about twice
    that of the eager attention code run in the same dtype."""
    q, k, v = make_qkv(B=1, H=2, Lq=33, Lk=47, Dh=32, dtype=dtype, device=device)
    want = run(attention_reference, q.float(), k.float(), v.float())
    got = run(attention, q, k, v, backend=backend)
    eager = run(eager_in_dtype, q, k, v)
    for name, g, e, w in zip(("output", "grad q", "grad k", "grad v"), got, eager, want):
        assert g.dtype == dtype, name
        ours = (g.double() - w.double()).abs().max().item()
        theirs = (e.double() - w.double()).abs().max().item()
        assert ours <= 2 * theirs + 1e-5, f"{name}: {ours} vs eager {theirs}"


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_double_backward(backend, device):
    """create_graph=True runs a differentiable backward through SDPA."""
    q, k, v = make_qkv(Lq=5, Lk=6, Dh=8, device=device)

    def second_order(fn):
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        (gq,) = torch.autograd.grad(fn(*leaves).square().sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(gq.square().sum(), leaves)

    with sdpa_kernel(SDPBackend.MATH):  # SDPA's kernel with a double backward
        want = second_order(attention_reference)
    for g, w in zip(second_order(lambda *qkv: attention(*qkv, backend=backend)), want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    q, k, v = (t.requires_grad_(True) for t in make_qkv(Lq=5, Lk=7, Dh=16, device=device))
    torch.library.opcheck(torch.ops.fastfields.attention.default, (q, k, v, 0.25, backend))
    out, lse = torch.ops.fastfields.attention(q.detach(), k.detach(), v.detach(), 0.25, backend)
    grad = torch.randn_like(out)
    args = (grad, q.detach(), k.detach(), v.detach(), out, lse, 0.25, backend)
    torch.library.opcheck(torch.ops.fastfields.attention_backward.default, args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    q, k, v = make_qkv(Lq=6, Lk=9, Dh=16, device=device)

    def loss(q, k, v):
        return (attention(q * 2, k, v, backend=backend) ** 2).sum().reshape(1)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for g, w in zip(run(compiled, q, k, v), run(loss, q, k, v)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Bad input: a clear error that names the argument.


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, "q must be a 4-D tensor [B, H, Lq, Dh]"),
        (lambda q, k, v: (q, k[:, :1], v[:, :1]), ValueError, "k must match q in batch, heads and head dim"),
        (lambda q, k, v: (q, k[..., :8], v[..., :8]), ValueError, "k must match q in batch, heads and head dim"),
        (lambda q, k, v: (q, k, v[:, :, :3]), ValueError, "k and v must have the same shape"),
        (lambda q, k, v: (q, k.double(), v), TypeError, "q, k and v must share one dtype"),
        (lambda q, k, v: (q.int(), k, v), TypeError, "q must be float32"),
        (lambda q, k, v: (q, k, v.to("meta")), ValueError, "v is on meta but q is on cpu"),
    ],
)
def test_bad_input(make, error, words):
    with pytest.raises(error) as info:
        attention(*make(*make_qkv()))
    assert words in str(info.value) and "attention" in str(info.value)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_triton_limits(backend, device):
    with pytest.raises(TypeError, match="backend='triton' takes float16, bfloat16 or float32"):
        attention(*make_qkv(dtype=torch.float64, device=device), backend=backend)
    with pytest.raises(ValueError, match="head dims up to 256"):
        attention(*make_qkv(Lq=2, Lk=2, Dh=257, device=device), backend=backend)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(scale="big"), TypeError, "scale must be a float or None"),
        (dict(backend="cpu"), BackendUnavailable, "not implemented for this op"),
        (dict(backend="vulkan"), ValueError, "backend must be 'auto' or one of"),
    ],
)
def test_bad_options(kwargs, error, words):
    with pytest.raises(error) as info:
        attention(*make_qkv(), **kwargs)
    assert words in str(info.value)
