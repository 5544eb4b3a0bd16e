"""Source of 01_forward_process.ipynb (built by notebooks/_build.py)."""

# ruff: noqa: E501  (markdown prose and tables; the code cells are linted in the .ipynb files)

M, C = "markdown", "code"

CELLS = [
    (M, r"""
    # 01 · The forward process: Gaussian diffusion in log-SNR coordinates

    A diffusion model's inference model is *fixed*: every latent $\mathbf{z}_t$, $t\in[0,1]$, is a noisy copy of the data,

    $$q(\mathbf{z}_t\mid\mathbf{x}) = \mathcal{N}(\mathbf{z}_t;\ \alpha_t\mathbf{x},\ \sigma_t^2\mathbf{I}),\qquad
    \mathbf{z}_t = \alpha_t\mathbf{x} + \sigma_t\boldsymbol{\epsilon},\quad \boldsymbol{\epsilon}\sim\mathcal{N}(0,\mathbf{I})
    \qquad\text{(eq. 3.1)}$$

    with $\alpha_t$ decreasing and $\sigma_t^2$ increasing in $t$. `vdmlab` uses the *variance-preserving* process,
    $\alpha_t^2 = 1-\sigma_t^2$ (eq. 3.8), and describes every noise level by its log signal-to-noise ratio
    $\lambda = \log(\alpha^2/\sigma^2)$ (§4.5), so that

    $$\alpha_\lambda^2 = \operatorname{sigmoid}(\lambda), \qquad \sigma_\lambda^2 = \operatorname{sigmoid}(-\lambda)
    \qquad\text{(eqs. A.1, A.4).}$$

    A **noise schedule** is then just a decreasing map $t\mapsto\lambda(t)$ from $\lambda_{\max}=\lambda(0)$ to
    $\lambda_{\min}=\lambda(1)$. This notebook reproduces **Figure 3.2** — the cosine and EDM schedules in terms of
    $\{\alpha,\sigma^2\}$ with $T=100$ steps — and shows images and a 2-D point cloud being noised over $t$, using only
    `vdmlab.diffusion.process`, `vdmlab.diffusion.schedules` and `vdmlab.data`.
    """),
    (C, r"""
    %matplotlib inline
    import math
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from vdmlab.data import DigitsDataModule, levels_to_values, make_toy2d
    from vdmlab.diffusion.process import alpha_sigma, diffuse, transition
    from vdmlab.diffusion.schedules import CosineSchedule, EDMSchedule

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny workloads: one thread is the fastest on a small, shared CPU
    plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})
    """),
    (M, r"""
    ## Two schedules with the same endpoints

    Both schedules below run from $\lambda_{\max}=15$ to $\lambda_{\min}=-15$ (the library defaults):

    * `CosineSchedule` — Nichol & Dhariwal's $\alpha_t=\cos(\pi t/2)$, i.e. $\lambda(t) = -2\log\tan(\pi t/2)$,
      truncated so that the endpoints are exact;
    * `EDMSchedule` — EDM's training noise distribution ($\log\sigma\sim\mathcal{N}(-1.2, 1.2^2)$, i.e.
      $\lambda\sim\mathcal{N}(2.4, 2.4^2)$) written as a schedule through the inverse normal CDF,
      $\lambda(t) = 2.4 - 2.4\,\Phi^{-1}(\tau(t))$.

    Every schedule exposes `logsnr(t)`, `dlogsnr_dt(t)`, its inverse `t_of(logsnr)` and the density `density(logsnr)`
    (notebook 03). Here we only need $\lambda(t)$ and `alpha_sigma`.
    """),
    (C, r"""
    schedules = {"cosine": CosineSchedule(-15.0, 15.0), "EDM": EDMSchedule(-15.0, 15.0)}
    T = 100
    t = torch.linspace(0.0, 1.0, T + 1)  # the T + 1 levels t_i = i/T of a T-step process

    fig, axes = plt.subplots(2, 2, figsize=(10, 5.2), gridspec_kw={"width_ratios": [1.6, 1]})
    for row, (name, schedule) in enumerate(schedules.items()):
        logsnr = schedule.logsnr(t)
        alpha, sigma = alpha_sigma(logsnr)
        ax = axes[row, 0]
        ax.plot(t, alpha, ".", ms=3.5, label=r"$\alpha_t$")
        ax.plot(t, sigma**2, ".", ms=3.5, label=r"$\sigma_t^2$")
        ax.set(title=f"{name}: $\\{{\\alpha_t, \\sigma_t^2\\}}$ at T = {T} steps", xlabel="t", ylim=(-0.03, 1.03))
        ax.legend(loc="center left")
        axes[row, 1].plot(t, logsnr, ".", ms=3.5, color="C2")
        axes[row, 1].set(title=f"{name}: log-SNR $\\lambda(t)$", xlabel="t", ylabel=r"$\lambda$")
    fig.suptitle("Figure 3.2 with vdmlab: cosine (top) and EDM (bottom) schedules", y=1.0)
    fig.tight_layout()
    plt.show()
    """),
    (M, r"""
    The cosine schedule moves through the log-SNR range at a steady pace in the middle of the time axis;
    EDM spends most of its time steps around $\lambda\approx 2.4$ (a moderately noisy image) and races through both
    ends of the $\lambda$ range. In terms of $\{\alpha,\sigma^2\}$ this means that under EDM the signal survives
    until $t\approx0.7$ and is destroyed within the last few steps, whereas the cosine schedule removes it gradually.
    In both cases $\alpha_1\approx 0$ and $\sigma_1^2\approx 1$: the last latent carries (almost) no information
    about $\mathbf{x}$, so $q(\mathbf{z}_1\mid\mathbf{x}) \approx \mathcal{N}(0,\mathbf{I}) = p(\mathbf{z}_1)$ —
    the property that removes the *hole problem* of VAEs (notebook 05).
    """),
    (C, r"""
    for name, schedule in schedules.items():
        ends = schedule.logsnr(torch.tensor([0.0, 0.5, 1.0]))
        a, s = alpha_sigma(ends)
        print(f"{name:>6}: λ(0), λ(½), λ(1) = {ends[0]:6.2f}, {ends[1]:6.2f}, {ends[2]:6.2f}   "
              f"α_0 = {a[0]:.6f}  σ_0² = {s[0]**2:.1e}   α_1 = {a[2]:.1e}  σ_1² = {s[2]**2:.6f}")
    """),
    (M, r"""
    ## Images noised over $t$

    The 8×8 digits of `DigitsDataModule` (17 grey levels mapped to $[-1,1]$) diffused with
    $\mathbf{z}_t = \alpha_t\mathbf{x}+\sigma_t\boldsymbol{\epsilon}$ (`diffuse`, eq. 3.1). The *same*
    $\boldsymbol{\epsilon}$ is used in every panel, so the rows differ only through $\lambda(t)$.
    """),
    (C, r"""
    digits = DigitsDataModule(batch_size=128, eval_batch_size=None, num_workers=0)
    digits.setup()
    pick = [int((digits.train_labels == label).nonzero()[0]) for label in (2, 7)]  # the first 2 and the first 7
    x = levels_to_values(digits.train_set.levels[pick], digits.num_levels)  # [2, 1, 8, 8] in [-1, 1]
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    times = torch.linspace(0.0, 1.0, 11)

    fig, axes = plt.subplots(2 * len(x), len(times), figsize=(10, 5.0))
    for i in range(len(x)):
        for row, (name, schedule) in enumerate(schedules.items()):
            logsnr = schedule.logsnr(times)
            n = len(times)
            z = diffuse(x[i].expand(n, -1, -1, -1), logsnr, eps[i].expand(n, -1, -1, -1))
            for j, ax in enumerate(axes[2 * i + row]):
                ax.imshow(z[j, 0], cmap="gray", vmin=-2.0, vmax=2.0, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"λ = {logsnr[j]:.1f}", fontsize=7, pad=2)
                if i == len(x) - 1 and row == 1:
                    ax.set_xlabel(f"t = {times[j]:.1f}")
            axes[2 * i + row, 0].set_ylabel(name)
    fig.suptitle(r"$z_t = \alpha_t x + \sigma_t \epsilon$ for two digits: the cosine and EDM rows share $\epsilon$", y=1.0)
    fig.tight_layout(h_pad=0.1, w_pad=0.1)
    plt.show()
    """),
    (M, r"""
    At $t=0.5$ the cosine schedule sits at $\lambda=0$ (signal and noise of equal variance) while EDM is still at
    $\lambda\approx2.4$: the digit stays legible for longer under EDM and then disappears within the last few steps.

    ## The aggregate posterior $q(\mathbf{z}_t)$ of a 2-D data set

    The same process applied to *every* point of the five-cluster toy set of Figure 2.4 shows the aggregate
    $q(\mathbf{z}_t)=\int q(\mathbf{z}_t\mid\mathbf{x})\,p_{\mathcal D}(\mathbf{x})\,d\mathbf{x}$ (eq. 2.35) melting into
    $\mathcal{N}(0,\mathbf{I})$; the circle is the 2σ contour of the standard normal.
    """),
    (C, r"""
    points = torch.tensor(make_toy2d("five_clusters", 2000, np.random.default_rng(0)), dtype=torch.float32)
    eps2 = torch.randn(points.shape, generator=torch.Generator().manual_seed(2))
    times = torch.tensor([0.0, 0.3, 0.5, 0.7, 0.85, 1.0])
    circle = 2 * torch.stack([torch.cos(torch.linspace(0, 2 * math.pi, 200)), torch.sin(torch.linspace(0, 2 * math.pi, 200))])

    fig, axes = plt.subplots(2, len(times), figsize=(11, 4), sharex=True, sharey=True)
    for row, (name, schedule) in enumerate(schedules.items()):
        for ax, t_j in zip(axes[row], times):
            logsnr = schedule.logsnr(t_j.expand(len(points)))
            z = diffuse(points, logsnr, eps2)
            ax.scatter(z[:1000, 0], z[:1000, 1], s=1, color="C0" if row == 0 else "C3")
            ax.plot(*circle, "k--", lw=0.7)
            ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title=f"{name}, t = {t_j:.2f}, λ = {logsnr[0]:.1f}")
            ax.title.set_fontsize(8)
    fig.tight_layout()
    plt.show()
    """),
    (M, r"""
    ## Variance preservation and the Markov chain of transitions

    Two properties of the process that the rest of the library builds on:

    * **Variance preserving** (eq. 3.8): for standardised data, $\mathbb{V}[\mathbf{z}_t] = \alpha_t^2\mathbb{V}[\mathbf{x}]+\sigma_t^2 = 1$
      at every $t$.
    * **Linear Gaussian transitions** (eqs. 3.9–3.22): $q(\mathbf{z}_t\mid\mathbf{z}_s) = \mathcal{N}(\alpha_{t|s}\mathbf{z}_s, \sigma_{t|s}^2\mathbf{I})$
      with $\alpha_{t|s}=\alpha_t/\alpha_s$ and $\sigma_{t|s}^2=\sigma_t^2-\alpha_{t|s}^2\sigma_s^2$. Going
      $\mathbf{x}\to\mathbf{z}_s\to\mathbf{z}_t$ with `transition` must give the same marginal as `diffuse` directly.
      (`transition` computes $\sigma_{t|s}^2 = -\sigma_t^2\,\mathrm{expm1}(\lambda_t-\lambda_s)$, which is exact in float32 even for tiny steps.)
    """),
    (C, r"""
    gen = torch.Generator().manual_seed(3)
    standardised = (points - points.mean(0)) / points.std(0)
    schedule = schedules["cosine"]
    print("V[z_t] of standardised data, per coordinate (eq. 3.8):")
    many = standardised.repeat(50, 1)  # 100,000 draws of (x, ε)
    for t_j in [0.0, 0.25, 0.5, 0.75, 1.0]:
        logsnr = schedule.logsnr(torch.tensor(t_j)).expand(len(many))
        z = diffuse(many, logsnr, torch.randn(many.shape, generator=gen))
        print(f"  t = {t_j:4.2f}  λ = {logsnr[0]:6.2f}   V[z_t] = {z.var(0).numpy().round(3)}")

    # x -> z_s -> z_t through the transition kernel, against x -> z_t directly, for one fixed x
    x0 = torch.tensor([[0.6, -0.2]]).expand(200_000, 2)
    lam_s, lam_t = torch.tensor(1.5).expand(len(x0)), torch.tensor(-0.5).expand(len(x0))
    z_s = diffuse(x0, lam_s, torch.randn(x0.shape, generator=gen))
    alpha_ts, sigma2_ts = transition(lam_s, lam_t)
    z_t_chain = alpha_ts[:, None] * z_s + sigma2_ts.sqrt()[:, None] * torch.randn(x0.shape, generator=gen)
    alpha_t, sigma_t = alpha_sigma(lam_t[0])
    print(f"\nx -> z_s -> z_t (λ_s = 1.5, λ_t = -0.5): mean {z_t_chain.mean(0).numpy().round(3)}, "
          f"var {z_t_chain.var(0).numpy().round(3)}")
    print(f"direct q(z_t|x) = N(α_t x, σ_t² I):       mean {(alpha_t * x0[0]).numpy().round(3)}, "
          f"var {float(sigma_t**2):.3f}")
    """),
    (M, r"""
    **Take-aways.** A VP Gaussian diffusion is fully described by the scalar function $\lambda(t)$; $\alpha$, $\sigma^2$,
    the transitions and the posteriors are closed-form functions of $\lambda$ (`vdmlab.diffusion.process`). Different
    schedules visit the same noise levels at different *times*: notebook 03 turns this into a density $p(\lambda)$, and
    notebook 04 shows that the (continuous-time) loss does not care about the schedule's shape — only its estimator's
    variance does.
    """),
]
