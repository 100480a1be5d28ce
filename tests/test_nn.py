"""fastfields.nn: OpenLRM's transformer decoder on the fused ops, against plain-PyTorch twins.

The twins are written here from OpenLRM's description (openlrm/models/{modulate,block,
transformer}.py): nn.LayerNorm + nn.MultiheadAttention, the code the checkpoints come from.
"""

import pytest
import torch
import torch.nn as nn

from fastfields.nn import Attention, ModLN, ModulatedTransformerBlock, TransformerDecoder

from conftest import backend_params

# (norm backend, attention backend, device): the plain PyTorch path and every compiled one.
PATHS = [pytest.param("torch", "torch", "cpu", id="torch")]
for param in backend_params():
    backend, device = param.values
    if backend == "triton":
        PATHS.append(pytest.param("triton", "triton", device, id=f"triton-{device}", marks=param.marks))
    elif backend == "cpu" and device == "cpu":
        PATHS.append(pytest.param("cpu", "torch", device, id="cpu", marks=param.marks))


class TwinModLN(nn.Module):
    def __init__(self, inner_dim, mod_dim, eps):
        super().__init__()
        self.norm = nn.LayerNorm(inner_dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, inner_dim * 2))

    def forward(self, x, mod):
        shift, scale = self.mlp(mod).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TwinBlock(nn.Module):
    def __init__(self, inner_dim, cond_dim, mod_dim, num_heads, eps, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = TwinModLN(inner_dim, mod_dim, eps)
        self.cross_attn = nn.MultiheadAttention(inner_dim, num_heads, kdim=cond_dim, vdim=cond_dim, bias=False, batch_first=True)
        self.norm2 = TwinModLN(inner_dim, mod_dim, eps)
        self.self_attn = nn.MultiheadAttention(inner_dim, num_heads, bias=False, batch_first=True)
        self.norm3 = TwinModLN(inner_dim, mod_dim, eps)
        hidden = int(inner_dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(inner_dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, inner_dim), nn.Dropout(0.0)
        )

    def forward(self, x, cond, mod):
        x = x + self.cross_attn(self.norm1(x, mod), cond, cond, need_weights=False)[0]
        h = self.norm2(x, mod)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm3(x, mod))


class TwinDecoder(nn.Module):
    def __init__(self, num_layers, num_heads, inner_dim, cond_dim, mod_dim, eps=1e-6):
        super().__init__()
        self.layers = nn.ModuleList(TwinBlock(inner_dim, cond_dim, mod_dim, num_heads, eps) for _ in range(num_layers))
        self.norm = nn.LayerNorm(inner_dim, eps=eps)

    def forward(self, x, cond, mod):
        for layer in self.layers:
            x = layer(x, cond, mod)
        return self.norm(x)


def tie(ours: nn.Module, twin: nn.Module, seed=0):
    """Random weights (biases and norms included) loaded into both, strict both ways."""
    torch.manual_seed(seed)
    for p in twin.parameters():
        nn.init.normal_(p, std=0.2)
    ours.load_state_dict(twin.state_dict(), strict=True)
    twin.load_state_dict(ours.state_dict(), strict=True)


def inputs(N=2, L=6, D=32, Lc=5, C=24, M=16, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen).to(device) for shape in ((N, L, D), (N, Lc, C), (N, M))]


def outputs_and_grads(module, args):
    args = [a.detach().requires_grad_(True) for a in args]
    out = module(*args)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
    params = [p for _, p in sorted(module.named_parameters())]
    grads = torch.autograd.grad(out, args + params, grad)
    return [out.detach(), *grads]


def assert_same(ours, twin, args, atol=2e-5, rtol=1e-4):
    for i, (g, w) in enumerate(zip(outputs_and_grads(ours, args), outputs_and_grads(twin, args))):
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"tensor {i}: {m}")


@pytest.mark.parametrize("norm_backend,attn_backend,device", PATHS)
@pytest.mark.parametrize("cond_dim", [24, 32], ids=["kdim!=D", "kdim==D"])
def test_block_matches_openlrm_twin(norm_backend, attn_backend, device, cond_dim):
    ours = ModulatedTransformerBlock(32, cond_dim, 16, 2, 1e-6, norm_backend=norm_backend, attn_backend=attn_backend).to(device)
    twin = TwinBlock(32, cond_dim, 16, 2, 1e-6).to(device)
    tie(ours, twin)
    assert_same(ours, twin, inputs(C=cond_dim, device=device))
    ours.eval()
    twin.eval()
    with torch.no_grad():  # nn.MultiheadAttention's inference fast path
        args = inputs(C=cond_dim, device=device, seed=5)
        torch.testing.assert_close(ours(*args), twin(*args), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("norm_backend,attn_backend,device", PATHS)
def test_decoder_matches_openlrm_twin(norm_backend, attn_backend, device):
    ours = TransformerDecoder("cond_mod", 2, 2, 32, 24, 16, norm_backend=norm_backend, attn_backend=attn_backend).to(device)
    twin = TwinDecoder(2, 2, 32, 24, 16).to(device)
    tie(ours, twin)
    assert_same(ours, twin, inputs(device=device))


def test_modln_matches_twin_and_init():
    ours, twin = ModLN(12, 6, 1e-5), TwinModLN(12, 6, 1e-5)
    tie(ours, twin)
    x, _, mod = inputs(L=3, D=12, M=6)
    assert_same(ours, twin, [x, mod])


def test_attention_matches_multihead_attention_with_bias():
    """Beyond OpenLRM (bias=False): the biased layout and initialisation of nn.MultiheadAttention too."""
    for kdim in (None, 24):
        torch.manual_seed(0)
        ours = Attention(32, 4, kdim=kdim, vdim=kdim, bias=True)
        torch.manual_seed(0)
        twin = nn.MultiheadAttention(32, 4, kdim=kdim, vdim=kdim, bias=True, batch_first=True)
        for (name, p), (twin_name, q) in zip(ours.state_dict().items(), twin.state_dict().items()):
            assert name == twin_name and p.shape == q.shape
        assert torch.count_nonzero(ours.in_proj_bias) == 0 and ours.out_proj.bias is not None
        tie(ours, twin)
        q, kv, _ = inputs(C=kdim or 32)
        want = twin(q, kv, kv, need_weights=False)[0]
        torch.testing.assert_close(ours(q, kv, kv), want, atol=2e-5, rtol=1e-4)


def test_attention_dropout_in_training_only():
    attn = Attention(16, 2, dropout=0.5)
    x = torch.randn(1, 6, 16)
    torch.manual_seed(0)
    first = attn(x, x, x)
    assert not torch.equal(first, attn(x, x, x))
    attn.eval()
    torch.testing.assert_close(attn(x, x, x), attn(x, x, x))


# ---------------------------------------------------------------------------------------
# State-dict layout: the keys and shapes of OpenLRM v1.1's `transformer.*` entries, from the
# official-model manifests (3DTopia/OpenLRM @ 3108b69, instantiated on CPU).

OPENLRM_SMALL_LAYER = {  # D=512, cond 384, mod 1024, 8 heads, 12 layers
    "norm1.norm.weight": [512], "norm1.norm.bias": [512],
    "norm1.mlp.1.weight": [1024, 1024], "norm1.mlp.1.bias": [1024],
    "cross_attn.q_proj_weight": [512, 512], "cross_attn.k_proj_weight": [512, 384],
    "cross_attn.v_proj_weight": [512, 384], "cross_attn.out_proj.weight": [512, 512],
    "norm2.norm.weight": [512], "norm2.norm.bias": [512],
    "norm2.mlp.1.weight": [1024, 1024], "norm2.mlp.1.bias": [1024],
    "self_attn.in_proj_weight": [1536, 512], "self_attn.out_proj.weight": [512, 512],
    "norm3.norm.weight": [512], "norm3.norm.bias": [512],
    "norm3.mlp.1.weight": [1024, 1024], "norm3.mlp.1.bias": [1024],
    "mlp.0.weight": [2048, 512], "mlp.0.bias": [2048], "mlp.3.weight": [512, 2048], "mlp.3.bias": [512],
}
OPENLRM_BASE_CROSS_ATTN = {  # D=768 = cond 768: packed projections
    "cross_attn.in_proj_weight": [2304, 768], "cross_attn.out_proj.weight": [768, 768],
}


def state_dict_shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_state_dict_matches_openlrm_small():
    with torch.device("meta"):
        decoder = TransformerDecoder("cond_mod", num_layers=12, num_heads=8, inner_dim=512, cond_dim=384, mod_dim=1024)
    expected = {f"layers.{i}.{k}": v for i in range(12) for k, v in OPENLRM_SMALL_LAYER.items()}
    expected.update({"norm.weight": [512], "norm.bias": [512]})
    got = state_dict_shapes(decoder)
    assert list(got) == list(expected)  # the same keys in OpenLRM's order
    assert got == expected
    assert sum(p.numel() for p in decoder.parameters()) == 86_612_992  # the manifest's transformer.* total


def test_state_dict_matches_openlrm_base_cross_attention():
    with torch.device("meta"):
        block = ModulatedTransformerBlock(768, 768, 1024, 12, 1e-6)
    got = state_dict_shapes(block)
    for key, shape in OPENLRM_BASE_CROSS_ATTN.items():
        assert got[key] == shape
    assert not any(k.startswith("cross_attn.") and "q_proj" in k for k in got)


def test_bad_block_type():
    with pytest.raises(ValueError, match="block_type must be 'cond_mod'"):
        TransformerDecoder("basic", 1, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="must be divisible by num_heads"):
        Attention(10, 3)
