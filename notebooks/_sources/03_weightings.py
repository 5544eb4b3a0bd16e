"""Source of 03_weightings.ipynb (built by notebooks/_build.py)."""

# ruff: noqa: E501  (markdown prose and tables; the code cells are linted in the .ipynb files)

M, C = "markdown", "code"

CELLS = [
    (M, r"""
    # 03 · Weightings $w(\lambda)$, schedule densities $p(\lambda)$ and augmentation kernels $p_w(t)$ (§4.4–4.7)

    Every diffusion objective in common use is one weighted integral over noise levels (eq. 4.113), estimated by
    importance sampling with the schedule's density $p(\lambda)$ (eq. 4.123):

    $$\mathcal{L}_w(\mathbf{x})=\frac12\int_{\lambda_{\min}}^{\lambda_{\max}} w(\lambda)\,\mathbb{E}_{\boldsymbol\epsilon}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}_\theta(\mathbf{z}_\lambda;\lambda)\|^2\,d\lambda
    =\frac12\,\mathbb{E}_{\lambda\sim p(\lambda),\,\boldsymbol\epsilon}\Big[\frac{w(\lambda)}{p(\lambda)}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}_\theta(\mathbf{z}_\lambda;\lambda)\|^2\Big].$$

    The **weighting** $w(\lambda)$ is the target: it decides *what* is optimised. The **schedule** only provides the
    importance distribution $p(\lambda)=-dt/d\lambda$ (eq. 4.102): it decides how noisy the estimate is (notebook 04).
    This notebook plots $p(\lambda)$ for every schedule and $w(\lambda)$ for every weighting of
    `vdmlab.diffusion.weighting`, recovers the weightings implied by popular losses, and draws the augmentation kernel
    $p_w(t)$ of §4.7 — a probability density only when $w$ is monotonic.
    """),
    (C, r"""
    import math
    import tempfile
    import warnings
    from pathlib import Path

    import matplotlib.pyplot as plt
    import torch
    from IPython.display import Image, Markdown, display

    from vdmlab.analysis.report import markdown_table
    from vdmlab.callbacks.plots import plot_schedule_and_weighting  # the plot logged during training
    from vdmlab.diffusion import learned_schedules as LS
    from vdmlab.diffusion import schedules as S
    from vdmlab.diffusion import weighting as W
    from vdmlab.diffusion.process import alpha_sigma

    %matplotlib inline
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


    def show_table(header, rows):
        display(Markdown(markdown_table(header, rows)))


    LO, HI = -10.0, 10.0  # every schedule on the same endpoints, as vdmlab compares them
    grid = torch.linspace(LO, HI, 4001, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    """),
    (M, r"""
    ## Schedule densities $p(\lambda)$ (§4.5)

    Sampling $t\sim\mathcal U(0,1)$ and setting $\lambda=\lambda(t)$ draws $\lambda$ from
    $p(\lambda)=p_T(t)\,|dt/d\lambda| = -dt/d\lambda$ (eqs. 4.100–4.102). `Schedule.density` returns it; we check that it
    integrates to one and equals the finite-difference slope of the inverse `t_of`.
    The learned schedule (VDM's monotone network, App. A.2) starts close to linear, the adaptive one (VDM++, eq. 4.130)
    starts uniform — both change during training (notebook 04).
    """),
    (C, r"""
    schedules = {
        "linear": S.LinearSchedule(LO, HI),
        "cosine": S.CosineSchedule(LO, HI),
        "shifted cosine (8x8)": S.SimpleDiffusionSchedule(LO, HI, resolution=8),
        "EDM": S.EDMSchedule(LO, HI),
        "flow": S.FlowSchedule(LO, HI),
        "learned (init)": LS.LearnedSchedule(LO, HI, hidden=256, lr_multiplier=1.0),
        "adaptive (init)": LS.AdaptiveSchedule(LO, HI),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    rows = []
    with torch.no_grad():
        for i, (name, schedule) in enumerate(schedules.items()):
            style = "--" if i >= 5 else "-"
            axes[0].plot(t, schedule.logsnr(t), style, label=name)
            p = schedule.density(grid)
            axes[1].plot(grid, p, style, label=name)
            inner = grid[1:-1]
            h = 1e-4
            fd = -(schedule.t_of(inner + h) - schedule.t_of(inner - h)) / (2 * h)
            rows.append([name, f"{float(torch.trapezoid(p, grid)):.4f}",
                         f"{float(((schedule.density(inner) - fd).abs() / fd).max()):.1e}"])
    axes[0].set(xlabel="t", ylabel=r"$\lambda(t)$", title="schedules (common endpoints)")
    axes[1].set(xlabel=r"$\lambda$", ylabel=r"$p(\lambda) = -dt/d\lambda$", title="importance densities", ylim=(0, None))
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    show_table(["schedule", "∫ p(λ) dλ", "max rel. diff. to −dt/dλ (finite differences)"], rows)
    """),
    (M, r"""
    Linear and the initial learned/adaptive schedules spread $\lambda$ evenly (the adaptive density is piecewise constant
    over 100 bins, uniform until it sees losses);
    cosine concentrates around $\lambda=0$ (in fact $p_{\cos}(\lambda)\propto\operatorname{sech}(\lambda/2)$), the
    resolution-shifted cosine moves that mass up by $2\log(64/8)\approx4.2$, EDM puts it around $\lambda\approx2.4$, and
    flow matching's $p(\lambda)\propto\operatorname{sech}^2(\lambda/4)$ is broader.

    ## Weightings $w(\lambda)$ (§4.4)

    `simple` (Ho et al.'s $\mathcal{L}_{\rm simple}$, eq. 4.95) and `min_snr` are defined relative to the training
    density, $w = p(\lambda)\cdot(\dots)$; they are shown under the cosine schedule. The `monotonic` attribute of each
    class is checked against the sign of $dw/d\lambda$ on the grid.
    """),
    (C, r"""
    p_cos = schedules["cosine"].density(grid)
    weightings = {
        "elbo": W.ELBOWeighting(),
        "sigmoid (b=2)": W.SigmoidWeighting(2.0),
        "v": W.VWeighting(),
        "flow": W.FlowWeighting(),
        "edm": W.EDMWeighting(),
        "iddpm": W.IDDPMWeighting(),
        "simple (cosine)": W.SimpleWeighting(),
        "min_snr γ=5 (cosine)": W.MinSNRWeighting(5.0),
    }
    formulas = {
        "elbo": "1", "sigmoid (b=2)": "sigmoid(b − λ)", "v": "e^{−λ/2}", "flow": "e^{−λ/2}",
        "edm": "N(λ; 2.4, 2.4²)(e^{−λ} + σ_d²)/σ_d²", "iddpm": "sech(λ/2)",
        "simple (cosine)": "p(λ)", "min_snr γ=5 (cosine)": "p(λ)·min(1, γe^{−λ})",
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    rows = []
    for name, weighting in weightings.items():
        w = weighting(grid, p_cos)
        non_increasing = bool((torch.diff(w) <= 1e-12 * w.abs().max()).all())
        ax = axes[0] if weighting.monotonic else axes[1]
        ax.semilogy(grid, w / w.max(), "--" if name == "flow" else "-", label=name)
        rows.append([name, f"`{type(weighting).__name__}`", f"w = {formulas[name]}", weighting.monotonic, non_increasing])
    axes[0].set(xlabel=r"$\lambda$", ylabel=r"$w(\lambda) / \max w$", title="monotonic weightings", ylim=(1e-6, 2))
    axes[1].set(xlabel=r"$\lambda$", title="non-monotonic weightings")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    show_table(["weighting", "class", "formula", "`monotonic`", "non-increasing on the grid"], rows)
    """),
    (M, r"""
    ## Every loss is a weighting: recovering the implied $w$

    Writing a practical loss as $\frac12\,\frac{w(\lambda)}{p(\lambda)}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2$ with the
    loss's own schedule identifies its weighting (§4.4; VDM++ Table 1). With the library's schedules and weightings, each
    identity below must give a ratio that is **constant in $t$**:

    * **$\mathcal{L}_{\rm simple}$ = IDDPM.** $\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2$ with $t\sim\mathcal U(0,1)$ implies $w = p(\lambda)$
      (eq. 4.95); under the cosine schedule that is $\operatorname{sech}(\lambda/2)/2\pi$, i.e. `IDDPMWeighting`.
    * **v-prediction MSE.** $\|\mathbf v-\hat{\mathbf v}\|^2 = \|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2/\alpha_t^2$ (Table 4.3, corrected —
      notebook 02) with the cosine schedule implies $w\propto e^{-\lambda/2}$: `VWeighting`.
    * **Flow matching.** $\|\mathbf u-\hat{\mathbf u}\|^2=\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2/(\alpha^{\rm rf}_t)^2$ under the
      rectified-flow schedule ($\alpha^{\rm rf}=1-t$) implies the same $w\propto e^{-\lambda/2}$: `FlowWeighting`.
    * **EDM.** The $\mathbf{x}$-MSE weighted by $(\sigma^2+\sigma_d^2)/(\sigma\sigma_d)^2$ with $\lambda\sim\mathcal N(2.4, 2.4^2)$:
      `EDMWeighting` under `EDMSchedule`, using $\|\mathbf x-\hat{\mathbf x}\|^2=e^{-\lambda}\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2$.
    """),
    (C, r"""
    t_in = t[1:-1]


    def multiplier(schedule, weighting, t_values):
        # the per-example factor ½·w(λ)/p(λ) = ½·w(λ)·(−dλ/dt) that multiplies ‖ε − ε̂‖² in the loss (eq. 4.123)
        lam, dlam = schedule(t_values)
        return 0.5 * weighting(lam, -1.0 / dlam) * (-dlam), lam


    rows = []
    m, lam = multiplier(schedules["cosine"], W.SimpleWeighting(), t_in)
    rows.append(["L_simple = ‖ε − ε̂‖², t ~ U(0,1)", "cosine", "`SimpleWeighting` (½·w/p ≡ ½)", m])
    rows.append(["L_simple under cosine", "cosine", "`IDDPMWeighting` ∝ p_cos",
                 W.IDDPMWeighting()(grid) / W.SimpleWeighting()(grid, p_cos)])
    m, lam = multiplier(schedules["cosine"], W.VWeighting(), t_in)
    rows.append(["‖v − v̂‖² = ‖ε − ε̂‖²/α²", "cosine", "`VWeighting`", m * alpha_sigma(lam)[0] ** 2])
    m, lam = multiplier(schedules["flow"], W.FlowWeighting(), t_in)
    a, s = alpha_sigma(lam)
    rows.append(["‖u − û‖² = ‖ε − ε̂‖²/α_rf², α_rf = α/(α+σ)", "flow", "`FlowWeighting`", m * (a / (a + s)) ** 2])
    m, lam = multiplier(schedules["EDM"], W.EDMWeighting(), t_in)
    sigma2_ve, sd2 = torch.exp(-lam), 0.5**2
    rows.append(["EDM: (σ²+σ_d²)/(σσ_d)²·‖x − x̂‖², ‖x − x̂‖² = e^{−λ}‖ε − ε̂‖²", "EDM", "`EDMWeighting`",
                 m / ((sigma2_ve + sd2) / (sigma2_ve * sd2) * sigma2_ve)])
    show_table(["practical loss", "schedule", "vdmlab weighting", "ratio (constant?)", "max/min − 1"],
               [[r[0], r[1], r[2], f"{float(r[3].mean()):.4g}", f"{float(r[3].max() / r[3].min() - 1):.1e}"] for r in rows])
    """),
    (M, r"""
    All ratios are constant to float64 precision (the constant absorbs $2\pi$ and the truncation of the schedules to the
    common endpoints). So "ε-MSE with the cosine schedule", "v-MSE", "flow matching" and "EDM" are four choices of
    $w(\lambda)$ — each could be trained with *any* schedule, which would only change the variance of the estimate
    (notebook 04).

    ## The augmentation kernel $p_w(t)$ (§4.7)

    Integrating by parts (eqs. 4.142–4.146),
    $\mathcal L_w(\mathbf x)=\int_0^1 \frac{dw(\lambda_t)}{dt}\,\mathcal L(t;\mathbf x)\,dt + c$, where $\mathcal L(t;\mathbf x)$ is
    the expected negative ELBO of the noisy data $\mathbf z_t$ (eqs. 4.153–4.158). When $w(\lambda_t)$ increases in $t$
    (i.e. $w$ is **monotonic**: non-increasing in $\lambda$), its normalised derivative
    $p_w(t)=\frac{dw(\lambda_t)/dt}{w(\lambda_{\min})-w(\lambda_{\max})}$ (eq. 4.150; `augmentation_kernel`) is a probability
    density and the objective is the ELBO under Gaussian data augmentation with noise levels $t\sim p_w$ (eq. 4.162).
    """),
    (C, r"""
    cosine = schedules["cosine"]
    monotonic = {f"sigmoid b={b:g}": W.SigmoidWeighting(b) for b in (-2.0, 0.0, 2.0, 4.0)}
    monotonic["v / flow"] = W.VWeighting()
    u = torch.linspace(0.0, 1.0, 4001, dtype=torch.float64)
    t_k = 0.5 - 0.5 * torch.cos(math.pi * u)  # both ends included, denser near t = 0 and 1 where p_w can be steep
    ends = torch.tensor([LO, HI], dtype=torch.float64)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    rows = []
    for name, weighting in monotonic.items():
        p_w = W.augmentation_kernel(weighting, cosine, t_k)
        w_min, w_max = weighting(ends)
        cdf = (weighting(cosine.logsnr(t_k)) - w_max) / (w_min - w_max)  # conditions (4.147-4.149): a CDF in t
        axes[0].plot(t_k, cdf, label=name)
        axes[1].plot(t_k, p_w, label=name)
        rows.append([name, f"{float(torch.trapezoid(p_w, t_k)):.4f}", f"{float(p_w.min()):.2e}"])
    axes[0].set(xlabel="t (cosine schedule)",
                ylabel=r"$(w(\lambda_t) - w(\lambda_{\max})) / (w(\lambda_{\min}) - w(\lambda_{\max}))$",
                title=r"normalised $w(\lambda_t)$: a CDF over t")
    axes[1].set(xlabel="t (cosine schedule)", ylabel=r"$p_w(t)$", title="augmentation kernel (eq. 4.150)",
                yscale="log", ylim=(1e-4, None))
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    show_table(["monotonic weighting", "∫ p_w(t) dt", "min p_w(t)"], rows)
    """),
    (M, r"""
    The sigmoid bias $b$ moves the augmentation noise: a larger $b$ up-weights cleaner data (small $t$). For `v`/`flow`,
    $w=e^{-\lambda/2}$ grows without bound as $\lambda\to\lambda_{\min}$, so its kernel piles up at $t\to1$ — within these
    endpoints it is still a proper density.

    ### Non-monotonic weightings (§4.7.1)

    For EDM, IDDPM, $\mathcal L_{\rm simple}$ and min-SNR, $dw(\lambda_t)/dt$ changes sign: where it is negative the objective
    *minimises* the ELBO of the noisy data at those noise levels. Since these $w$ are (nearly) zero at both ends, the
    negative part of $dw/dt$ is as large as the positive part: half of the weight on noisy-data ELBOs is negative. `augmentation_kernel` refuses them, and likewise the ELBO
    weighting (constant $w$: a point mass at $t=0$, i.e. no augmentation at all).
    """),
    (C, r"""
    for weighting in (W.EDMWeighting(), W.ELBOWeighting()):
        try:
            W.augmentation_kernel(weighting, cosine, t_k)
        except ValueError as error:
            print(f"{type(weighting).__name__}: ValueError: {error}")

    non_monotonic = {name: weightings[name] for name in ("edm", "iddpm", "simple (cosine)", "min_snr γ=5 (cosine)")}
    fig, axes = plt.subplots(1, len(non_monotonic), figsize=(12, 2.9))
    rows = []
    for ax, (name, weighting) in zip(axes, non_monotonic.items()):
        tt = t_k.clone().requires_grad_(True)
        lam = cosine.logsnr(tt)
        w = weighting(lam, cosine.density(lam))
        (dw_dt,) = torch.autograd.grad(w.sum(), tt)
        dw_dt = dw_dt / torch.trapezoid(dw_dt.abs(), t_k)  # normalised by its total variation
        ax.plot(t_k, dw_dt, "k", lw=1)
        ax.fill_between(t_k, dw_dt, 0, where=dw_dt < 0, color="C3", alpha=0.5, label="dw/dt < 0")
        ax.fill_between(t_k, dw_dt, 0, where=dw_dt >= 0, color="C2", alpha=0.5, label="dw/dt ≥ 0")
        ax.set(title=name, xlabel="t (cosine schedule)")
        negative = float(torch.trapezoid((-dw_dt).clamp_min(0), t_k))
        peak = int(torch.argmax(w.detach()))
        rows.append([name, f"{float(lam[peak]):.2f} (t = {float(t_k[peak]):.2f})", f"{float((dw_dt < 0).double().mean()):.2f}",
                     f"{negative / (1 - negative):.2f}"])
    axes[0].set_ylabel(r"$\frac{d w(\lambda_t)}{dt}$ / $\int |dw/dt|\,dt$")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    plt.show()
    show_table(["non-monotonic weighting", "w(λ_t) peaks at λ", "share of t with dw/dt < 0",
                "negative / positive variation"], rows)
    """),
    (M, r"""
    These objectives remain a weighted integral of noisy-data ELBOs (eq. 4.164), but with some negative weights — one
    explanation of why they trade likelihood for perceptual quality. VDM++ shows that monotonic weightings (e.g.
    sigmoid) reach comparable sample quality while staying ELBOs under data augmentation.

    ## The same plot from the library

    `vdmlab.callbacks.plots.plot_schedule_and_weighting` draws λ(t), p(λ), w(λ) and p_w(t) for any pair; training logs it at
    the start of each run (and as learned/adaptive schedules evolve).
    """),
    (C, r"""
    with tempfile.TemporaryDirectory() as tmp:
        for schedule, weighting in ((S.CosineSchedule(LO, HI), W.SigmoidWeighting(2.0)), (S.EDMSchedule(LO, HI), W.EDMWeighting())):
            path = plot_schedule_and_weighting(schedule, weighting, Path(tmp) / "plot.png",
                                               title=f"{type(schedule).__name__} + {type(weighting).__name__}")
            display(Image(filename=str(path), width=900))
    """),
]
