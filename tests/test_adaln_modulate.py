"""adaln_modulate: every backend against the PyTorch reference, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from fastfields.ops.adaln_modulate import adaln_modulate
from fastfields.reference.adaln_modulate import adaln_modulate_reference

from conftest import backend_params

BACKENDS = [p for p in backend_params() if p.values[0] in ("triton", "cpu")]
NAMES = ("x", "shift", "scale", "weight", "bias", "gate", "residual")
# (weight, bias, gate, residual) present?
VARIANTS = {
    "plain": (False, False, False, False),
    "affine": (True, True, False, False),
    "weight-only": (True, False, False, False),
    "gated-residual": (True, True, True, True),
    "gate-only": (False, True, True, False),
    "residual-only": (False, False, False, True),
}


def make_inputs(B=2, L=5, D=7, variant="affine", dtype=torch.float32, param_dtype=None, device="cpu", seed=0):
    """Dict of the op's tensor arguments (absent optional ones are None)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dt)

    has_weight, has_bias, has_gate, has_residual = VARIANTS[variant]
    p_dtype = param_dtype or dtype
    return {
        "x": rand(B, L, D) * 3 + 1,
        "shift": rand(B, D, dt=p_dtype),
        "scale": rand(B, D, dt=p_dtype) * 0.5,
        "weight": rand(D, dt=p_dtype) if has_weight else None,
        "bias": rand(D, dt=p_dtype) if has_bias else None,
        "gate": rand(B, D, dt=p_dtype) if has_gate else None,
        "residual": rand(B, L, D) if has_residual else None,
    }


def call(fn, inputs, **kwargs):
    x, shift, scale = inputs["x"], inputs["shift"], inputs["scale"]
    rest = {k: inputs[k] for k in ("weight", "bias", "gate", "residual")}
    return fn(x, shift, scale, **rest, **kwargs)


def run(fn, inputs, grad_seed=1, **kwargs):
    """Output and the gradients of every present input for a fixed random upstream gradient."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in inputs.items() if v is not None}
    out = call(fn, {**inputs, **leaves}, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, list(leaves.values()), grad.to(out.device, out.dtype))
    return {"output": out.detach(), **{f"grad {k}": g for k, g in zip(leaves, grads)}}


def assert_matches_reference(backend, inputs, atol=1e-5, rtol=1e-5, **kwargs):
    got = run(adaln_modulate, inputs, backend=backend, **kwargs)
    want = run(adaln_modulate_reference, inputs, **kwargs)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------
# The reference is the formula OpenLRM's ModLN and DiT write.


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_is_layer_norm_then_modulate(variant):
    inputs = make_inputs(variant=variant, dtype=torch.float64)
    x, shift, scale, gate, residual = (inputs[k] for k in ("x", "shift", "scale", "gate", "residual"))
    y = F.layer_norm(x, (x.shape[-1],), inputs["weight"], inputs["bias"], 1e-6) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    if gate is not None:
        y = gate.unsqueeze(1) * y
    if residual is not None:
        y = residual + y
    torch.testing.assert_close(call(adaln_modulate_reference, inputs), y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(call(adaln_modulate, inputs, backend="torch"), y, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("variant", ["plain", "gated-residual"])
def test_reference_gradcheck(variant):
    inputs = make_inputs(B=1, L=2, D=3, variant=variant, dtype=torch.float64)
    names = [k for k, v in inputs.items() if v is not None]
    leaves = [inputs[k].requires_grad_(True) for k in names]

    def fn(*args):
        return adaln_modulate_reference(*args[:3], **dict(zip(names[3:], args[3:])))

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)
    if variant == "plain":  # second order once: it is slow
        assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Every backend against the reference.


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference(backend, device, variant):
    assert_matches_reference(backend, make_inputs(variant=variant, device=device))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "shape",
    [dict(B=1, L=1, D=1), dict(B=3, L=1, D=33), dict(B=1, L=9, D=128), dict(B=2, L=3, D=300), dict(B=1, L=0, D=8)],
    ids=lambda s: "x".join(f"{k}{v}" for k, v in s.items()),
)
def test_shapes(backend, device, shape):
    assert_matches_reference(backend, make_inputs(device=device, variant="gated-residual", **shape))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_eps_and_constant_rows(backend, device):
    """A constant token row has zero variance: its normalised value is 0 and eps sets 1/std."""
    inputs = make_inputs(device=device)
    inputs["x"][0, 1] = 2.5
    as_float64 = {k: None if v is None else v.double() for k, v in inputs.items()}
    for eps in (1e-6, 1e-2):
        # 1/std = 1/sqrt(eps) amplifies rounding: compare with the float64 reference (float32
        # F.layer_norm's own weight gradient is off by 2e-4 here).
        got = run(adaln_modulate, inputs, backend=backend, eps=eps)
        want = run(adaln_modulate_reference, as_float64, eps=eps)
        for name in want:
            torch.testing.assert_close(got[name].double(), want[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_inputs_and_gradient_layouts(backend, device):
    inputs = make_inputs(B=2, L=6, D=8, variant="gated-residual", device=device)
    # shift and scale as chunks of one modulation output (OpenLRM's ModLN), x transposed in memory.
    mod = torch.randn(2, 16, device=device)
    shift, scale = mod.chunk(2, dim=-1)
    x = inputs["x"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not shift.is_contiguous() and not x.is_contiguous()
    strided = {**inputs, "x": x, "shift": shift, "scale": scale}
    assert_matches_reference(backend, strided)

    x = x.detach().requires_grad_(True)
    adaln_modulate(x, shift, scale, backend=backend).square().sum().backward()
    assert x.grad.stride() == x.stride()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_only_some_inputs_need_grad(backend, device):
    inputs = make_inputs(variant="gated-residual", device=device)
    for wanted in (["x"], ["shift", "gate"], ["weight", "residual"]):
        got = {k: v.detach().requires_grad_(k in wanted) if v is not None else None for k, v in inputs.items()}
        want = {k: v.detach().requires_grad_(k in wanted) if v is not None else None for k, v in inputs.items()}
        grads = torch.autograd.grad(call(adaln_modulate, got, backend=backend).sum(), [got[k] for k in wanted])
        expected = torch.autograd.grad(call(adaln_modulate_reference, want).sum(), [want[k] for k in wanted])
        for name, g, e in zip(wanted, grads, expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=lambda m: f"grad {name}: {m}")


def eager_in_dtype(x, shift, scale, weight=None, bias=None, gate=None, residual=None):
    """What model code does today (OpenLRM's ModLN, DiT's gate), all in x's dtype: the baseline of the half-precision rule."""
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-6) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    if gate is not None:
        y = gate.unsqueeze(1) * y
    return y if residual is None else residual + y


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, device, dtype):
    """The flash-attention rule: our error against a float32 reference is at most about twice
    that of the eager PyTorch code run in the same dtype."""
    inputs = make_inputs(B=2, L=16, D=96, variant="gated-residual", dtype=dtype, device=device)
    want = run(adaln_modulate_reference, {k: None if v is None else v.float() for k, v in inputs.items()})
    got = run(adaln_modulate, inputs, backend=backend)
    eager = run(eager_in_dtype, inputs)
    for name in want:
        assert got[name].dtype == dtype, name
        ours = (got[name].double() - want[name].double()).abs().max().item()
        theirs = (eager[name].double() - want[name].double()).abs().max().item()
        assert ours <= 2 * theirs + 1e-3 * want[name].abs().max().item(), f"{name}: {ours} vs eager {theirs}"


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype, param_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_mixed_dtypes(backend, device, dtype, param_dtype):
    """Modulation in another dtype than the tokens (a float32 MLP on bfloat16 tokens, or a bfloat16
    MLP under autocast on float32 tokens): output in x's dtype, gradients in each input's."""
    inputs = make_inputs(variant="gated-residual", dtype=dtype, param_dtype=param_dtype, device=device)
    got = run(adaln_modulate, inputs, backend=backend)
    want = run(adaln_modulate_reference, inputs)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        torch.testing.assert_close(got[name], want[name], atol=2e-2, rtol=2e-2, msg=lambda m: f"{name}: {m}")
    assert got["output"].dtype == dtype and got["grad shift"].dtype == param_dtype


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float64(backend, device):
    inputs = make_inputs(variant="gated-residual", dtype=torch.float64, device=device)
    assert_matches_reference(backend, inputs, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    inputs = make_inputs(B=2, L=3, D=4, variant="gated-residual", dtype=torch.float64, device=device)
    names = list(inputs)
    leaves = [inputs[k].requires_grad_(True) for k in names]

    def fn(*args):
        return adaln_modulate(*args[:3], **dict(zip(names[3:], args[3:])), backend=backend)

    # fast_mode: a few random directional derivatives instead of the full Jacobian (the interpreter is slow).
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_double_backward(backend, device):
    """create_graph=True (e.g. a gradient penalty) runs a differentiable backward through the reference."""
    inputs = make_inputs(B=1, L=4, D=6, variant="affine", dtype=torch.float64, device=device)

    def second_order(**kwargs):
        leaves = {k: v.detach().requires_grad_(True) for k, v in inputs.items() if v is not None}
        out = call(adaln_modulate if kwargs else adaln_modulate_reference, {**inputs, **leaves}, **kwargs)
        (gx,) = torch.autograd.grad(out.square().sum(), leaves["x"], create_graph=True)
        return torch.autograd.grad(gx.square().sum(), list(leaves.values()))

    for g, w in zip(second_order(backend=backend), second_order()):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, under the Triton interpreter
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_finite_rows_stay_local(backend, device):
    """As F.layer_norm: a NaN or inf in a token row makes that row NaN, the other rows are untouched."""
    inputs = make_inputs(B=1, L=4, D=6, device=device)
    inputs["x"][0, 1, 2] = float("nan")
    inputs["x"][0, 2, 0] = float("inf")
    out = call(adaln_modulate, inputs, backend=backend)
    assert torch.isnan(out[0, 1:3]).all()
    torch.testing.assert_close(out[0, [0, 3]], call(adaln_modulate_reference, inputs)[0, [0, 3]])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    inputs = make_inputs(B=2, L=3, D=5, variant="gated-residual", device=device)
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items()}
    args = (*(leaves[k] for k in NAMES), 1e-6, backend)
    torch.library.opcheck(torch.ops.fastfields.adaln_modulate.default, args)
    plain = (leaves["x"], leaves["shift"], leaves["scale"], None, None, None, None, 1e-5, backend)
    torch.library.opcheck(torch.ops.fastfields.adaln_modulate.default, plain, test_utils=("test_schema", "test_faketensor"))

    detached = [leaves[k].detach() for k in NAMES[:6]]
    _, mean, rstd = torch.ops.fastfields.adaln_modulate(*detached, None, 1e-6, backend)
    grad = torch.randn(2, 3, 5, device=device)
    needs = [True, True, False, True, False, True]  # unrequested gradients come back empty
    bwd_args = (grad, *detached, mean, rstd, backend, needs)
    torch.library.opcheck(torch.ops.fastfields.adaln_modulate_backward.default, bwd_args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    inputs = make_inputs(B=2, L=4, D=8, variant="gated-residual", device=device)

    def loss(x, shift, scale, weight, bias, gate, residual):
        out = adaln_modulate(x, shift, scale, weight=weight, bias=bias, gate=gate, residual=residual, backend=backend)
        return (out * 2).square().sum().reshape(1)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")

    def as_op(fn):
        return lambda x, shift, scale, **rest: fn(x, shift, scale, **rest)

    got = run(as_op(compiled), inputs)
    want = run(as_op(loss), inputs)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------
# Bad input: a clear error that names the argument.


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(x=lambda t: t[0]), ValueError, "x must be a 3-D tensor [B, L, D]"),
        (dict(x=lambda t: t[..., :0]), ValueError, "x must have D >= 1"),
        (dict(x=lambda t: t.int()), TypeError, "x must be float32"),
        (dict(shift=lambda t: t[:1]), ValueError, "shift must have shape [B, D] = [2, 7]"),
        (dict(scale=lambda t: t[0]), ValueError, "scale must be a 2-D tensor [B, D]"),
        (dict(scale=lambda t: None), TypeError, "scale must be a torch.Tensor"),
        (dict(weight=lambda t: t[:3]), ValueError, "weight must have shape [D] = [7]"),
        (dict(gate=lambda t: t.t()), ValueError, "gate must have shape [B, D]"),
        (dict(shift=lambda t: t.long()), TypeError, "shift must be float32"),
        (dict(residual=lambda t: t[:, :2]), ValueError, "residual must have the shape of x"),
        (dict(residual=lambda t: t.double()), TypeError, "residual must have the dtype of x"),
        (dict(bias=lambda t: t.to("meta")), ValueError, "bias is on meta but x is on cpu"),
    ],
)
def test_bad_input(change, error, words):
    inputs = make_inputs(variant="gated-residual")
    for name, fn in change.items():
        inputs[name] = fn(inputs[name])
    with pytest.raises(error) as info:
        call(adaln_modulate, inputs)
    assert words in str(info.value) and "adaln_modulate" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(eps=-1.0), "eps must be a non-negative float"),
        (dict(eps="small"), "eps must be a non-negative float"),
        (dict(backend="cuda"), "not implemented for this op"),
        (dict(backend="vulkan"), "backend must be 'auto' or one of"),
    ],
)
def test_bad_options(kwargs, words):
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        call(adaln_modulate, make_inputs(), **kwargs)
    assert words in str(info.value)
