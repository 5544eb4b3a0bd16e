"""Source of 04_invariance_and_variance.ipynb (built by notebooks/_build.py)."""

# ruff: noqa: E501  (markdown prose and tables; the code cells are linted in the .ipynb files)

M, C = "markdown", "code"

CELLS = [
    (M, r"""
    # 04 · The loss is invariant to the schedule; its estimator's variance is not (§4.3, §4.6)

    In continuous time the weighted diffusion loss is an integral over log-SNR (eq. 4.113),

    $$\mathcal L_w(\mathbf x)=\frac12\int_{\lambda_{\min}}^{\lambda_{\max}} w(\lambda)\,h(\lambda;\mathbf x)\,d\lambda,
    \qquad h(\lambda;\mathbf x)=\mathbb E_{\boldsymbol\epsilon}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}(\mathbf z_\lambda;\lambda)\|^2,$$

    so the schedule $t\mapsto\lambda(t)$ matters only through its endpoints (§4.3). Training, however, uses the Monte-Carlo
    estimator $\frac12\frac{w(\lambda)}{p(\lambda)}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2$ with $\lambda\sim p(\lambda)$ (eq. 4.123):
    the schedule is an **importance distribution**, and its shape sets the estimator's variance (§4.6).

    To see both facts *exactly*, we avoid training altogether: for Gaussian data $\mathbf x\sim\mathcal N(\boldsymbol\mu, s^2\mathbf I)$ the
    optimal denoiser is known in closed form, and so are the first two moments of its error. Every schedule of the
    library — fixed, learned (VDM, App. A.2) and adaptive (VDM++, eq. 4.130) — is then compared on equal endpoints.
    """),
    (C, r"""
    %matplotlib inline
    import math
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from IPython.display import Markdown, display
    from torch import nn

    from vdmlab.analysis.report import markdown_table
    from vdmlab.diffusion import learned_schedules as LS
    from vdmlab.diffusion import schedules as S
    from vdmlab.diffusion import weighting as W
    from vdmlab.diffusion.losses import diffusion_loss, iid_times, low_discrepancy_times
    from vdmlab.diffusion.parameterization import EpsParameterization
    from vdmlab.diffusion.process import alpha_sigma, expand_like

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


    def show_table(header, rows):
        display(Markdown(markdown_table(header, rows)))
    """),
    (M, r"""
    ## Gaussian data and its exact denoiser

    For $\mathbf x\sim\mathcal N(\boldsymbol\mu, s^2\mathbf I)$ and $\mathbf z_\lambda=\alpha\mathbf x+\sigma\boldsymbol\epsilon$, the posterior mean is
    $\hat{\mathbf x}=\boldsymbol\mu+k(\mathbf z_\lambda-\alpha\boldsymbol\mu)$ with $k=\alpha s^2/(\alpha^2s^2+\sigma^2)$, and
    $\hat{\boldsymbol\epsilon}=(\mathbf z_\lambda-\alpha\hat{\mathbf x})/\sigma$ is the best $\boldsymbol\epsilon$-prediction any network can make
    (the same idea as `tests/oracles.py`). Its error is linear in $\boldsymbol\epsilon$:
    $\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}=A\boldsymbol\epsilon-\mathbf c$ with $A=\alpha k$ and $\mathbf c=(1-A)\,\alpha(\mathbf x-\boldsymbol\mu)/\sigma$, so for each $\mathbf x$

    $$h(\lambda;\mathbf x)=DA^2+\|\mathbf c\|^2,\qquad \mathbb V_{\boldsymbol\epsilon}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2=2DA^4+4A^2\|\mathbf c\|^2 .$$

    The denoiser is an `nn.Module` with the library's `forward(z, logsnr)` signature, used below as the network of
    `diffusion_loss` with `EpsParameterization`.
    """),
    (C, r"""
    D, STD = 4, 0.2
    MU = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=torch.float64)


    class ExactDenoiser(nn.Module):
        # eps_hat(z; λ) = (z - α x_hat)/σ with x_hat = E[x | z] for x ~ N(mu, std² I)

        def __init__(self, mu, std):
            super().__init__()
            self.register_buffer("mu", mu)
            self.std = float(std)

        def forward(self, z, logsnr):
            alpha, sigma = alpha_sigma(expand_like(logsnr, z))
            mu = self.mu.to(z.dtype)
            gain = alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2)
            x_hat = mu + gain * (z - alpha * mu)
            return (z - alpha * x_hat) / sigma


    def error_moments(x, logsnr):
        # E_eps ||eps - eps_hat||^2 and E_eps ||eps - eps_hat||^4 for each x [N, D] at each λ [L]: two [N, L] tensors
        alpha, sigma = alpha_sigma(logsnr.double())
        A = alpha**2 * STD**2 / (alpha**2 * STD**2 + sigma**2)
        c2 = (x.double() - MU).pow(2).sum(-1, keepdim=True) * ((1 - A) * alpha / sigma) ** 2
        m2 = D * A**2 + c2
        return m2, 2 * D * A**4 + 4 * A**2 * c2 + m2**2


    net = ExactDenoiser(MU, STD)
    eps_param = EpsParameterization()
    gen = torch.Generator().manual_seed(0)
    x_eval = MU + STD * torch.randn(256, D, dtype=torch.float64, generator=gen)  # the data points we evaluate on

    # the closed form against a direct Monte-Carlo check at one noise level
    lam0 = torch.tensor([1.0], dtype=torch.float64)
    m2, m4 = error_moments(x_eval[:1], lam0)
    xs = x_eval[:1].expand(200_000, D)
    e = torch.randn(xs.shape, dtype=torch.float64, generator=gen)
    sq = (e - net(alpha_sigma(lam0)[0] * xs + alpha_sigma(lam0)[1] * e, lam0.expand(len(xs)))).pow(2).sum(1)
    print(f"λ = 1: E||ε-ε̂||² closed form {float(m2):.4f}, MC {float(sq.mean()):.4f};   "
          f"E||ε-ε̂||⁴ closed form {float(m4):.4f}, MC {float(sq.pow(2).mean()):.4f}")
    """),
    (M, r"""
    ## §4.3: the loss depends only on the endpoints

    We compute $\mathcal L_w$ averaged over the evaluation points in three ways, for the ELBO weighting ($w\equiv1$) and
    the sigmoid weighting of VDM++ ($w=\operatorname{sigmoid}(2-\lambda)$):

    1. the schedule-free integral over $\lambda$ (eq. 4.113);
    2. the integral over **time** under each schedule, $\frac12\int_0^1 w(\lambda_t)\,h(\lambda_t)\,(-d\lambda/dt)\,dt$ (eqs. 4.107, 4.116);
    3. the library's Monte-Carlo estimator `diffusion_loss` (eq. 4.123), averaged over 128 draws of $(t,\boldsymbol\epsilon)$ per point.

    All schedules share $[\lambda_{\min},\lambda_{\max}]=[-10, 10]$; one more linear schedule with $\lambda_{\max}=6$ shows that the
    endpoints *do* matter.
    """),
    (C, r"""
    LO, HI = -10.0, 10.0
    fixed = {"linear": S.LinearSchedule(LO, HI), "cosine": S.CosineSchedule(LO, HI), "EDM": S.EDMSchedule(LO, HI)}
    weightings = {"elbo": W.ELBOWeighting(), "sigmoid": W.SigmoidWeighting(2.0)}
    grid = torch.linspace(LO, HI, 2001, dtype=torch.float64)
    M2, M4 = error_moments(x_eval, grid)  # [256, 2001]
    u = torch.linspace(0.0, 1.0, 4001, dtype=torch.float64)
    t_grid = 0.5 - 0.5 * torch.cos(math.pi * u)  # denser near t = 0 and 1, where λ(t) is steep


    def loss_over_lambda(weighting, lo=LO, hi=HI):
        # eq. 4.113 by quadrature over λ, averaged over x_eval
        lam = torch.linspace(lo, hi, 2001, dtype=torch.float64)
        m2, _ = error_moments(x_eval, lam)
        return float(0.5 * torch.trapezoid(weighting(lam) * m2.mean(0), lam))


    @torch.no_grad()
    def loss_over_time(schedule, weighting):
        # ½ ∫ w(λ_t) h(λ_t) (-dλ/dt) dt by quadrature over t, averaged over x_eval
        lam, dlam = schedule(t_grid)
        m2, _ = error_moments(x_eval, lam)
        return float(0.5 * torch.trapezoid(weighting(lam) * m2.mean(0) * (-dlam), t_grid))


    @torch.no_grad()
    def monte_carlo(schedule, weighting, repeats=128, seed=1, sampler=iid_times, timesteps=None):
        # per-example weighted losses [repeats, N] from the library's estimator, with common random numbers
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(repeats):
            t = sampler(len(x_eval), generator=g).double()
            eps = torch.randn(x_eval.shape, dtype=torch.float64, generator=g)
            out.append(diffusion_loss(x_eval, t, eps, net=net, schedule=schedule, weighting=weighting,
                                      parameterization=eps_param, timesteps=timesteps).loss)
        return torch.stack(out)


    rows = []
    for wname, weighting in weightings.items():
        rows.append([wname, "∫ dλ (eq. 4.113)", f"{loss_over_lambda(weighting):.4f}", "—"])
        for name, schedule in {**fixed, "linear, λ_max = 6": S.LinearSchedule(LO, 6.0)}.items():
            mc = monte_carlo(schedule, weighting)
            se = math.sqrt(float(mc.var(0).mean()) / mc.numel())  # Monte-Carlo error of the mean over (t, ε)
            rows.append([wname, name, f"{loss_over_time(schedule, weighting):.4f}", f"{float(mc.mean()):.4f} ± {2 * se:.4f}"])
    show_table(["weighting", "schedule", "exact ½∫₀¹ w h (−dλ/dt) dt", "Monte Carlo ± 2 s.e."], rows)
    """),
    (M, r"""
    On equal endpoints, the exact value is the same for every schedule to quadrature precision, and each Monte-Carlo
    estimate agrees with it within its error bar — but the error bars differ a lot between schedules. Moving $\lambda_{\max}$
    from 10 to 6 changes the ELBO term, as it should: only the endpoints enter (eq. 4.80). (For continuous data the
    ELBO's integrand does not vanish at high SNR — $h\to D$ — which is why `vdmlab` adds the discretised decoder term of
    eq. 3.60 at $\lambda_{\max}$.)

    ### Discrete time breaks the invariance

    With $T$ steps the loss is a Riemann-like sum, $\frac12\sum_{i=1}^T \mathrm{expm1}(\lambda_{s_i}-\lambda_{t_i})\,h(\lambda_{t_i})$
    with $t_i=i/T$, $s_i=(i-1)/T$ (eq. A.38; `diffusion_loss(..., timesteps=T)`). It depends on where the schedule puts its
    $T$ levels and converges to the continuous value as $T\to\infty$ (shown for the ELBO weighting, where the sum is an ELBO too).
    """),
    (C, r"""
    @torch.no_grad()
    def discrete_loss(schedule, T):
        # exact expectation of the T-step loss (ELBO weighting), averaged over x_eval
        lam = schedule.logsnr(torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64))  # λ(0) > ... > λ(1)
        m2, _ = error_moments(x_eval, lam[1:])
        return float(0.5 * (torch.expm1(lam[:-1] - lam[1:]) * m2.mean(0)).sum())


    elbo = weightings["elbo"]
    rows = [[name] + [f"{discrete_loss(s, T):.4f}" for T in (10, 100, 1000)] + [f"{loss_over_time(s, elbo):.4f}"]
            for name, s in fixed.items()]
    show_table(["schedule", "T = 10", "T = 100", "T = 1000", "T → ∞"], rows)
    mc10 = monte_carlo(fixed["cosine"], elbo, timesteps=10)
    print(f"check with diffusion_loss(timesteps=10) under cosine: {float(mc10.mean()):.4f} "
          f"± {2 * math.sqrt(float(mc10.var(0).mean()) / mc10.numel()):.4f}")
    """),
    (M, r"""
    ## §4.6: the variance depends on the shape of the schedule

    For one data point the estimator $L=\frac12\frac{w(\lambda)}{p(\lambda)}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2$ with $\lambda\sim p$,
    $\boldsymbol\epsilon\sim\mathcal N(0,\mathbf I)$ has second moment
    $\mathbb E[L^2]=\frac14\int \frac{w(\lambda)^2}{p(\lambda)}\,\mathbb E_{\boldsymbol\epsilon}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^4\,d\lambda$,
    so the variance $\mathbb E[L^2]-\mathcal L_w^2$ is exact too. Among all densities it is smallest for
    $p^*(\lambda)\propto w(\lambda)\sqrt{\mathbb E\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^4}$ — the optimal importance distribution of §4.6,
    a lower bound that no schedule can beat. Two library schedules *learn* their shape:

    * **`LearnedSchedule`** (VDM, App. A.2): a monotone network whose shape $\eta$ is trained to minimise $\mathbb E[L^2]$. Calling
      `schedule.update(logsnr, loss)` before `backward()` arms a per-example factor $L_i/\bar L$ so that $\eta$ receives
      $\nabla_\eta\mathbb E[L^2]/(2\bar L)$ — the gradient of the variance, since $\mathbb E[L]$ does not depend on the shape — while
      the network (here: no parameters) would receive the plain gradient. We fit it for 600 Adam steps.
    * **`AdaptiveSchedule`** (VDM++, eq. 4.130): $p(\lambda)\propto\mathbb E[w(\lambda)\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2]$, estimated by a
      per-bin moving average that `update(logsnr, loss)` feeds. We accumulate it over 20 batches.
    """),
    (C, r"""
    def fit_learned(weighting, steps=600, lr=0.02, batch=256, seed=2):
        # Adam on the variance gradient of the learned shape; returns the schedule and E[L²] per step
        schedule = LS.LearnedSchedule(LO, HI, lr_multiplier=1.0)
        optimizer = torch.optim.Adam(schedule.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        second_moment = []
        for _ in range(steps):
            x = (MU + STD * torch.randn(batch, D, dtype=torch.float64, generator=g)).float()
            t = low_discrepancy_times(batch, generator=g)
            eps = torch.randn(x.shape, generator=g)
            terms = diffusion_loss(x, t, eps, net=net, schedule=schedule, weighting=weighting, parameterization=eps_param)
            schedule.update(terms.logsnr.detach(), terms.loss.detach())  # arm the variance gradient, then backward
            optimizer.zero_grad()
            terms.loss.mean().backward()
            optimizer.step()
            second_moment.append(float(terms.loss.detach().pow(2).mean()))
        return schedule.eval(), second_moment


    @torch.no_grad()
    def fit_adaptive(weighting, batches=20, batch=256, seed=3):
        # accumulate the bin statistics of eq. (4.130), each batch drawn from the current density as in training
        schedule = LS.AdaptiveSchedule(LO, HI, num_bins=100)
        g = torch.Generator().manual_seed(seed)
        for _ in range(batches):
            x = MU + STD * torch.randn(batch, D, dtype=torch.float64, generator=g)
            t = low_discrepancy_times(batch, generator=g).double()
            eps = torch.randn(x.shape, dtype=torch.float64, generator=g)
            terms = diffusion_loss(x, t, eps, net=net, schedule=schedule, weighting=weighting, parameterization=eps_param)
            schedule.update(terms.logsnr, terms.loss)
        return schedule


    learned, adaptive, curves = {}, {}, {}
    for wname, weighting in weightings.items():
        learned[wname], curves[wname] = fit_learned(weighting)
        adaptive[wname] = fit_adaptive(weighting)

    fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
    for ax, (wname, curve) in zip(axes, curves.items()):
        smooth = np.convolve(curve, np.ones(20) / 20, mode="valid")
        ax.semilogy(curve, color="C0", alpha=0.3)
        ax.semilogy(np.arange(19, len(curve)), smooth, color="C0")
        ax.set(xlabel="Adam step", ylabel=r"batch mean of $L^2$", title=f"fitting LearnedSchedule, weighting {wname}")
    fig.tight_layout()
    plt.show()
    """),
    (C, r"""
    @torch.no_grad()
    def exact_stats(density, weighting):
        # exact E_x[E L] and E_x[Var L] of the importance-sampled estimator with density p on the λ grid
        w = weighting(grid)
        mean = 0.5 * torch.trapezoid(w * M2, grid, dim=-1)
        second = 0.25 * torch.trapezoid(w**2 * M4 / density, grid, dim=-1)
        return float(mean.mean()), float((second - mean**2).mean())


    results, densities = {}, {}
    for wname, weighting in weightings.items():
        w = weighting(grid)
        p_star = w * M4.mean(0).sqrt()
        p_star = p_star / torch.trapezoid(p_star, grid)
        target = w * M2.mean(0)  # the adaptive schedule's target, eq. (4.130)
        densities[wname] = {"optimal p*": p_star, "adaptive target ∝ w·h": target / torch.trapezoid(target, grid)}
        candidates = {**fixed, "learned (fitted)": learned[wname], "adaptive (fitted)": adaptive[wname]}
        rows, best = [], exact_stats(p_star, weighting)[1]
        for name, schedule in candidates.items():
            with torch.no_grad():
                p = schedule.density(grid).double()
            densities[wname][name] = p
            _, var = exact_stats(p, weighting)
            mc = monte_carlo(schedule, weighting)  # the same draws as above for the fixed schedules
            se = math.sqrt(float(mc.var(0).mean()) / mc.numel())
            rows.append([name, f"{loss_over_time(schedule, weighting):.4f}", f"{float(mc.mean()):.3f} ± {2 * se:.3f}",
                         f"{var:.4g}", f"{float(mc.var(0).mean()):.4g}", f"{var / best:.2f}"])
        rows.append(["optimal p*", f"{exact_stats(p_star, weighting)[0]:.4f}", "—", f"{best:.4g}", "—", "1.00"])
        results[wname] = rows
        display(Markdown(f"**weighting = {wname}**, λ ∈ [{LO:g}, {HI:g}], {len(x_eval)} data points × 128 draws of (t, ε)"))
        show_table(["schedule", "E[L] exact (over t)", "E[L] MC ± 2 s.e.", "Var[L] exact", "Var[L] MC", "Var / optimal"], rows)
    """),
    (C, r"""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    styles = {"linear": "C0-", "cosine": "C1-", "EDM": "C3-", "learned (fitted)": "C2-", "adaptive (fitted)": "C4-",
              "optimal p*": "k--", "adaptive target ∝ w·h": "k:"}
    for ax, (wname, dens) in zip(axes, densities.items()):
        for name, style in styles.items():
            ax.semilogy(grid, dens[name], style, lw=1.3 if "optimal" in name else 1.1, label=name)
        ax.set(xlabel=r"$\lambda$", ylabel=r"$p(\lambda)$", title=f"importance densities, weighting {wname}", ylim=(1e-4, 1))
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    plt.show()
    """),
    (M, r"""
    **Reading the table and the plot.**

    * All schedules estimate the same $\mathbb E[L]$ (the exact integrals over $t$ agree, and so do the Monte-Carlo
      estimates within their error bars, which are wide for the high-variance schedules) — yet their variances span more
      than an order of magnitude, and the closed-form variances match the measured ones. The variance is large wherever $p(\lambda)$ is small
      compared with $w(\lambda)\sqrt{\mathbb E\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^4}$: for the ELBO weighting the integrand stays large up to
      $\lambda_{\max}$ (the error of an optimal denoiser tends to $D$ at high SNR), so the schedules concentrated around
      moderate $\lambda$ (cosine, EDM) pay for their thin tails with ~50× the optimal variance, while linear stays within
      ~6×; for the sigmoid
      weighting the integrand is concentrated, and EDM's $p(\lambda)$ happens to fit it well.
    * The **learned** schedule, fitted by its variance gradient alone, moves from near-linear towards $p^*$ and beats every
      fixed schedule for both weightings; the **adaptive** schedule, which tracks $w\cdot h$ (dotted) rather than the optimal
      $w\sqrt{\mathbb E\|\cdot\|^4}$ (dashed), lands close to the optimum too — without any gradient. Both are just better
      importance distributions for the *same* objective: the choice of weighting decides what is learned, the choice of
      schedule only how noisy the gradient is (VDM++).

    ## Low-discrepancy times

    Variance can also be reduced across a batch: `low_discrepancy_times` draws $t_i=(u+i/B)\bmod 1$ with one shared $u$
    (VDM App. I.1), which stratifies the noise levels of a batch. It leaves each example's loss distribution unchanged but
    reduces the variance of the **batch mean**, the quantity that drives the gradient — as far as that variance comes from
    the spread of $w/p\cdot h$ over $\lambda$. Once the schedule is close to optimal, what is left is mostly the noise of
    $\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2$ at a given $\lambda$, which stratifying $t$ cannot remove.
    """),
    (C, r"""
    @torch.no_grad()
    def batch_mean_variance(schedule, weighting, sampler, batch=64, repeats=400, seed=5):
        # variance over draws of the mean loss of one fixed batch of data points
        g = torch.Generator().manual_seed(seed)
        x = x_eval[:batch]
        means = []
        for _ in range(repeats):
            t = sampler(batch, generator=g).double()
            eps = torch.randn(x.shape, dtype=torch.float64, generator=g)
            means.append(diffusion_loss(x, t, eps, net=net, schedule=schedule, weighting=weighting,
                                        parameterization=eps_param).loss.mean())
        return float(torch.stack(means).var())


    rows = []
    for wname, weighting in weightings.items():
        for name, schedule in {"cosine": fixed["cosine"], "learned (fitted)": learned[wname]}.items():
            v_iid = batch_mean_variance(schedule, weighting, iid_times)
            v_ld = batch_mean_variance(schedule, weighting, low_discrepancy_times)
            rows.append([wname, name, f"{v_iid:.4g}", f"{v_ld:.4g}", f"{v_iid / v_ld:.1f}×"])
    show_table(["weighting", "schedule", "Var of batch mean, iid t", "low-discrepancy t", "reduction"], rows)
    """),
    (M, r"""
    **Take-aways.** (i) With equal endpoints every schedule optimises the same continuous-time objective (§4.3); only a
    discrete-time loss depends on the schedule's shape. (ii) The schedule is an importance distribution: its shape sets the
    variance of the training loss, and it can be *learned* for that purpose (VDM's variance gradient) or *adapted* to the
    loss magnitudes (VDM++) without changing what the model learns (§4.6). `python -m vdmlab.cli.variance ckpt_path=...`
    runs the same comparison for a trained checkpoint.
    """),
]
