"""DDPM over radiance fields: the schedule, the forward process, the posterior, and the
sampling loops DiffRF uses (ancestral, DDIM, RePaint-style completion, rendering-guided
synthesis).

Timesteps are integers ``t`` in ``{0, ..., T-1}`` (``alphas_cumprod[t] = prod_{s<=t} (1 -
betas[s])``); ``t = -1`` stands for clean data (``alpha_bar = 1``) wherever a loop steps
"to" it. A denoiser is any callable ``eps = denoiser(x_t [B, ...], t [B] int64)``.
Every loop draws its noise from ``generator`` (a ``torch.Generator`` on the samples'
device, or None for the global one), so a seeded generator reproduces a sample.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``[T]`` float64 betas, linear from ``beta_start`` to ``beta_end`` inclusive (DDPM)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64, device="cpu")


def _randn(shape, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values[t]`` per batch item, shaped to broadcast against ``x [B, ...]``; t = -1 reads 1
    for alpha_bar-like tables (the caller pads)."""
    return values[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def repaint_positions(n_steps: int, jump_length: int, jump_n_sample: int) -> List[int]:
    """RePaint's (Lugmayr et al. 2022) jump schedule over ``n_steps`` reverse positions.

    Positions index a timestep sequence ``seq[0] < ... < seq[n_steps-1]``; position -1 is
    clean data. The walk starts at ``n_steps - 1`` and goes down one position per reverse
    step; every ``jump_length`` positions it goes back up ``jump_length`` positions
    (re-noising) ``jump_n_sample - 1`` times. ``jump_n_sample = 1`` is plain sampling.
    """
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"repaint_positions: jump_length and jump_n_sample must be >= 1, got {jump_length}, {jump_n_sample}")
    jumps = {j: jump_n_sample - 1 for j in range(0, max(n_steps - jump_length, 0), jump_length)}
    position, walk = n_steps - 1, [n_steps - 1]
    while position >= 0:
        position -= 1
        walk.append(position)
        if jumps.get(position, 0) > 0:
            jumps[position] -= 1
            for _ in range(jump_length):
                position += 1
                walk.append(position)
    return walk


class GaussianDiffusion(nn.Module):
    """The DDPM schedule as buffers, and the math on it.

    Buffers (float32, computed in float64): ``betas [T]``, ``alphas_cumprod [T]``,
    ``alphas_cumprod_prev [T]`` (1 at t = 0), ``posterior_variance [T]`` (``beta~_t``),
    ``posterior_log_variance_clipped [T]`` (t = 0 takes t = 1's value, as ADM),
    ``posterior_mean_coef1 [T]``, ``posterior_mean_coef2 [T]``.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.05):
        super().__init__()
        betas = linear_betas(timesteps, beta_start, beta_end)
        alphas = 1.0 - betas
        ab = torch.cumprod(alphas, 0)
        # Computed on the CPU even under a ``torch.device("meta")`` context (from_pretrained):
        # meta cumprod would import torch's reference kernels (seconds) and yield no values.
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64, device="cpu"), ab[:-1]])
        post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        post_log = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        tables = {
            "betas": betas, "alphas_cumprod": ab, "alphas_cumprod_prev": ab_prev,
            "posterior_variance": post_var, "posterior_log_variance_clipped": post_log,
            "posterior_mean_coef1": betas * ab_prev.sqrt() / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab),
        }
        for name, value in tables.items():
            self.register_buffer(name, value.float())

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    def _alpha_bar(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """alpha_bar at ``t [B]`` (1 where t = -1), broadcasting against ``x``."""
        padded = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])
        return _at(padded, t + 1, x)

    def _check_t(self, t, x: torch.Tensor, op: str) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.dtype.is_floating_point or t.shape != (x.shape[0],):
            raise ValueError(f"{op}: t must be an integer tensor [B] = [{x.shape[0]}] (or a scalar), got {t.dtype} {list(t.shape)}")
        if bool(((t < -1) | (t >= self.timesteps)).any()):
            raise ValueError(f"{op}: t must be in [0, {self.timesteps - 1}] (-1: clean data), got {t.tolist()}")
        return t.long()

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t, noise: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A draw of ``q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)``; ``noise`` is the eps used."""
        t = self._check_t(t, x0, "q_sample")
        noise = _randn(x0.shape, x0, generator) if noise is None else noise
        ab = self._alpha_bar(t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def renoise(self, x_s: torch.Tensor, s, t, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A draw of ``q(x_t | x_s)`` for ``t > s`` (s = -1: from clean data):
        ``N(sqrt(ab_t / ab_s) x_s, (1 - ab_t / ab_s) I)`` (RePaint's resampling jump)."""
        s, t = self._check_t(s, x_s, "renoise"), self._check_t(t, x_s, "renoise")
        if bool((t <= s).any()):
            raise ValueError(f"renoise: need t > s, got s={s.tolist()}, t={t.tolist()}")
        ratio = self._alpha_bar(t, x_s) / self._alpha_bar(s, x_s)
        return ratio.sqrt() * x_s + (1.0 - ratio).sqrt() * _randn(x_s.shape, x_s, generator)

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(x_{t-1} | x_t, x_0)``: ``(mean, variance, clipped log-variance)``, broadcast to ``x0``."""
        t = self._check_t(t, xt, "q_posterior")
        mean = _at(self.posterior_mean_coef1, t, xt) * x0 + _at(self.posterior_mean_coef2, t, xt) * xt
        return mean, _at(self.posterior_variance, t, xt), _at(self.posterior_log_variance_clipped, t, xt)

    def predict_x0(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """The one-step estimate ``x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``."""
        t = self._check_t(t, xt, "predict_x0")
        ab = self._alpha_bar(t, xt)
        return (xt - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    def predict_eps(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """The eps that maps ``x0`` to ``x_t``: ``(x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)``."""
        t = self._check_t(t, xt, "predict_eps")
        ab = self._alpha_bar(t, xt)
        return (xt - ab.sqrt() * x0) / (1.0 - ab).sqrt()

    # ------------------------------------------------------------------ reverse steps
    def p_sample(self, denoiser: Denoiser, xt: torch.Tensor, t: int, *, clip: bool = True,
                 generator: Optional[torch.Generator] = None, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One ancestral step ``x_t -> x_{t-1}`` with the posterior at the (clipped) x0 estimate
        and DDPM's fixed-small variance; no noise at ``t = 0``."""
        tt = torch.full((xt.shape[0],), int(t), device=xt.device, dtype=torch.long)
        eps = denoiser(xt, tt) if eps is None else eps
        x0 = self.predict_x0(xt, tt, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, log_var = self.q_posterior(x0, xt, tt)
        if int(t) == 0:
            return mean
        return mean + (0.5 * log_var).exp() * _randn(xt.shape, xt, generator)

    def ddim_step(self, xt: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, *, eta: float = 0.0,
                  clip: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """DDIM (Song et al. 2021) from ``t`` to ``t_prev < t`` (-1: clean) given ``eps``; with a
        clipped x0, eps is recomputed from it (as ADM). ``eta = 1`` is DDPM-like noise."""
        tt = torch.full((xt.shape[0],), int(t), device=xt.device, dtype=torch.long)
        tp = torch.full_like(tt, int(t_prev))
        x0 = self.predict_x0(xt, tt, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.predict_eps(xt, tt, x0)
        ab, ab_prev = self._alpha_bar(tt, xt), self._alpha_bar(tp, xt)
        sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        out = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp_min(0).sqrt() * eps
        if eta > 0 and int(t_prev) >= 0:
            out = out + sigma * _randn(xt.shape, xt, generator)
        return out

    def ddim_timesteps(self, steps: int) -> List[int]:
        """``steps`` timesteps evenly spread over ``[0, T-1]`` (both ends included), ascending."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.timesteps:
            raise ValueError(f"ddim_timesteps: steps must be an int in [1, {self.timesteps}], got {steps!r}")
        if steps == 1:
            return [self.timesteps - 1]
        seq = torch.linspace(0, self.timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
        return sorted(set(seq))

    # ------------------------------------------------------------------ loops
    def _sequence(self, steps: Optional[int]) -> List[int]:
        return list(range(self.timesteps)) if steps is None else self.ddim_timesteps(steps)

    def _step(self, denoiser, x, t, t_prev, steps, eta, clip, generator, eps=None):
        if steps is None:  # ancestral: consecutive timesteps
            return self.p_sample(denoiser, x, t, clip=clip, generator=generator, eps=eps)
        if eps is None:
            eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        return self.ddim_step(x, t, t_prev, eps, eta=eta, clip=clip, generator=generator)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, shape: Sequence[int], *, steps: Optional[int] = None, eta: float = 0.0,
               clip: bool = True, generator: Optional[torch.Generator] = None, device=None,
               dtype: torch.dtype = torch.float32, noise: Optional[torch.Tensor] = None,
               progress: bool = False) -> torch.Tensor:
        """Unconditional samples ``shape``: ``steps=None`` runs T ancestral steps, an int runs
        DDIM over :meth:`ddim_timesteps` (``eta`` 0: deterministic given ``noise``)."""
        x = noise.clone() if noise is not None else torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        seq = self._sequence(steps)
        for i in _progress(range(len(seq) - 1, -1, -1), progress, "sample"):
            x = self._step(denoiser, x, seq[i], seq[i - 1] if i > 0 else -1, steps, eta, clip, generator)
        return x

    @torch.no_grad()
    def complete(self, denoiser: Denoiser, known: torch.Tensor, mask: torch.Tensor, *, steps: Optional[int] = None,
                 jump_length: int = 10, jump_n_sample: int = 1, eta: float = 0.0, clip: bool = True,
                 generator: Optional[torch.Generator] = None, progress: bool = False) -> torch.Tensor:
        """RePaint-style masked completion: at every reverse step the known region (``mask``
        1, broadcasting to ``known``) is replaced by ``known`` forward-diffused to the new
        timestep, the rest comes from the denoiser; ``jump_n_sample > 1`` adds resampling
        jumps of ``jump_length`` positions (:func:`repaint_positions`). The result equals
        ``known`` exactly where ``mask`` is 1."""
        mask = mask.to(known.dtype).expand_as(known)
        seq = self._sequence(steps)
        walk = repaint_positions(len(seq), jump_length, jump_n_sample)
        x = torch.randn(known.shape, generator=generator, device=known.device, dtype=known.dtype)
        x = mask * self.q_sample(known, seq[-1], generator=generator) + (1 - mask) * x
        for cur, nxt in _progress(list(zip(walk[:-1], walk[1:])), progress, "complete"):
            t_cur = seq[cur] if cur >= 0 else -1
            t_nxt = seq[nxt] if nxt >= 0 else -1
            if nxt > cur:  # resampling jump: diffuse the whole field forward again
                x = self.renoise(x, t_cur, t_nxt, generator)
                continue
            unknown = self._step(denoiser, x, t_cur, t_nxt, steps, eta, clip, generator)
            known_t = known if t_nxt < 0 else self.q_sample(known, t_nxt, generator=generator)
            x = mask * known_t + (1 - mask) * unknown
        return x

    def sample_guided(self, denoiser: Denoiser, shape: Sequence[int], loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
                      steps: int = 50, scale: float = 1.0, through_denoiser: bool = False, eta: float = 0.0,
                      clip: bool = True, generator: Optional[torch.Generator] = None, device=None,
                      dtype: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
        """DDIM sampling guided by a differentiable loss of the x0 estimate (e.g. a rendering
        loss against an observed image): at each step ``eps <- eps + scale * sqrt(1 - ab_t) *
        grad_{x_t} loss(x0(x_t, eps))``, classifier guidance (Dhariwal & Nichol, eq. 14) with
        ``log p(y | x_t) = -loss``. ``through_denoiser=False`` treats eps as constant in that
        gradient (``d x0 / d x_t = 1 / sqrt(ab_t)``: no backward through the U-Net, the cheap
        form); True backpropagates through the denoiser (DPS-style)."""
        x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        seq = self.ddim_timesteps(steps)
        for i in _progress(range(len(seq) - 1, -1, -1), progress, "guided"):
            t, t_prev = seq[i], (seq[i - 1] if i > 0 else -1)
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                if through_denoiser:
                    eps = denoiser(xg, tt)
                else:
                    with torch.no_grad():
                        eps = denoiser(x, tt)
                loss = loss_fn(self.predict_x0(xg, tt, eps))
                grad, = torch.autograd.grad(loss, xg)
            with torch.no_grad():
                eps = eps.detach() + scale * (1 - self._alpha_bar(tt, x)).sqrt() * grad
                x = self.ddim_step(x, t, t_prev, eps, eta=eta, clip=clip, generator=generator)
        return x.detach()


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, leave=False)
