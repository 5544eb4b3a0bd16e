"""Source of 02_parameterizations.ipynb (built by notebooks/_build.py)."""

# ruff: noqa: E501  (markdown prose and tables; the code cells are linted in the .ipynb files)

M, C = "markdown", "code"

CELLS = [
    (M, r"""
    # 02 · Six parameterizations of one model (Tables 4.1–4.3, eq. 4.50)

    A diffusion network can output the clean data $\hat{\mathbf{x}}$, the noise $\hat{\boldsymbol{\epsilon}}$, the score
    $\mathbf{s}\approx\nabla\log q(\mathbf{z}_t)$, the gradient of an energy $\nabla_{\mathbf{z}}E$, the velocity
    $\hat{\mathbf{v}}=\alpha_t\hat{\boldsymbol\epsilon}-\sigma_t\hat{\mathbf{x}}$ or the flow $\hat{\mathbf{u}}=\hat{\boldsymbol\epsilon}-\hat{\mathbf{x}}$ (§4.1).
    Because $\mathbf{z}_t=\alpha_t\mathbf{x}+\sigma_t\boldsymbol\epsilon$ is linear, all of them are linear maps of one
    another (Table 4.2), define the same posterior mean $\mu_\theta(\mathbf{z}_t;s,t)$ (Table 4.1), and their squared
    errors differ only by a factor that depends on $t$ (Table 4.3).

    `vdmlab.diffusion.parameterization` implements the six as classes with `to_eps`, `to_x`, `from_eps`, `predict`,
    `posterior_mean` and `denoiser`. The one loss of the library is always written on $\boldsymbol\epsilon$
    (eq. 4.123); a parameterization only changes what the network outputs. Below, the three tables are checked
    numerically in float64 — including the printed entries that turn out to be **errata** — and eq. (4.50) explains
    why $\boldsymbol\epsilon$-prediction blows up near $t=1$.
    """),
    (C, r"""
    %matplotlib inline
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from IPython.display import Markdown, display

    from vdmlab.analysis.report import markdown_table
    from vdmlab.diffusion import parameterization as PZ
    from vdmlab.diffusion.process import alpha_sigma, diffuse, posterior_mean_eps, transition
    from vdmlab.diffusion.schedules import CosineSchedule

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


    def show_table(header, rows):
        display(Markdown(markdown_table(header, rows)))


    PARAMS = {p.name: p for p in (PZ.XParameterization(), PZ.EpsParameterization(), PZ.ScoreParameterization(),
                                  PZ.EnergyParameterization(), PZ.VParameterization(), PZ.FlowParameterization())}
    print({name: type(p).__name__ for name, p in PARAMS.items()})
    """),
    (M, r"""
    ## A batch of exact quantities

    Random data $\mathbf{x}$, noise $\boldsymbol\epsilon$ and log-SNRs $\lambda_t\in[-10,10]$ (float64). From them we form
    every target exactly: $\mathbf{s}=-\boldsymbol\epsilon/\sigma_t$ (eq. 4.19), $\mathbf{v}=\alpha_t\boldsymbol\epsilon-\sigma_t\mathbf{x}$
    (eq. 4.29) and $\mathbf{u}=\boldsymbol\epsilon-\mathbf{x}$ (eq. 4.41).

    The flow targets live in **rectified-flow coordinates**, where $\alpha+\sigma=1$ (eq. 4.40), while the other four
    live in **VP coordinates** with $\alpha^2+\sigma^2=1$. The two are the same process up to a rescaling of the latent,
    $\mathbf{z}^{\rm rf}=\mathbf{z}/(\alpha+\sigma)$ with $\alpha^{\rm rf}=\alpha/(\alpha+\sigma)$, $\sigma^{\rm rf}=\sigma/(\alpha+\sigma)$
    (eq. A.45); `FlowParameterization` applies it internally, so it works on the VP latent like every other class.
    """),
    (C, r"""
    N, D = 256, 8
    x = torch.randn(N, D, dtype=torch.float64)
    eps = torch.randn(N, D, dtype=torch.float64)
    lam = torch.empty(N, dtype=torch.float64).uniform_(-10.0, 10.0)
    z = diffuse(x, lam, eps)
    a, s = (c[:, None] for c in alpha_sigma(lam))


    def targets(alpha, sigma):
        # every target of Table 4.2 for latents z = alpha x + sigma eps (VP or rectified-flow coordinates)
        zz = alpha * x + sigma * eps
        return {"z": zz, "x": x, "eps": eps, "s": -eps / sigma, "v": alpha * eps - sigma * x, "u": eps - x}


    vp = targets(a, s)
    a_rf, s_rf = a / (a + s), s / (a + s)
    rf = targets(a_rf, s_rf)
    print("max |z - z_vp| =", float((z - vp["z"]).abs().max()),
          "  max |z/(α+σ) - z_rf| =", float((z / (a + s) - rf["z"]).abs().max()))
    """),
    (M, r"""
    ## The library's maps: `from_eps`, `to_eps`, `to_x`

    For each parameterization, `from_eps(ε, z, λ)` must return the exact target the network is trained to output, and
    `to_eps` / `to_x` must map it back to $\boldsymbol\epsilon$ and $\mathbf{x}$.
    """),
    (C, r"""
    expected_output = {"x": x, "eps": eps, "score": vp["s"], "energy": -vp["s"], "v": vp["v"], "flow": rf["u"]}
    rows = []
    for name, p in PARAMS.items():
        out = p.from_eps(eps, z, lam)
        rows.append([f"`{type(p).__name__}`", f"{float((out - expected_output[name]).abs().max()):.1e}",
                     f"{float((p.to_eps(out, z, lam) - eps).abs().max()):.1e}",
                     f"{float((p.to_x(out, z, lam) - x).abs().max()):.1e}"])
    show_table(["parameterization", "max abs err of output", "... of to_eps", "... of to_x"], rows)
    """),
    (M, r"""
    ## Table 4.2 as printed

    Each printed entry expresses a target (row) through another quantity (column). We evaluate all 20 of them as printed,
    once in VP and once in rectified-flow coordinates, and mark the coordinate system in which the entry holds (relative
    error below $10^{-9}$).
    """),
    (C, r"""
    # Table 4.2 as printed: PRINTED[row][column](q, α, σ) expresses the row's quantity through the column's
    PRINTED = {
        "x":   {"eps": lambda q, a, s: (q["z"] - s * q["eps"]) / a, "s": lambda q, a, s: (q["z"] + s**2 * q["s"]) / a,
                "v": lambda q, a, s: a * q["z"] - s * q["v"], "u": lambda q, a, s: q["z"] - s * q["u"]},
        "eps": {"x": lambda q, a, s: (q["z"] - a * q["x"]) / s, "s": lambda q, a, s: -s * q["s"],
                "v": lambda q, a, s: s * q["z"] + a * q["v"], "u": lambda q, a, s: a * q["u"] + q["z"]},
        "s":   {"x": lambda q, a, s: (a * q["x"] - q["z"]) / s**2, "eps": lambda q, a, s: -q["eps"] / s,
                "v": lambda q, a, s: (-s * q["z"] + a * q["v"]) / s, "u": lambda q, a, s: (-a * q["u"] + q["z"]) / s},
        "v":   {"x": lambda q, a, s: (a * q["z"] - q["x"]) / s, "eps": lambda q, a, s: (q["eps"] - s * q["z"]) / a,
                "s": lambda q, a, s: -s * (q["z"] + q["s"]) / a, "u": lambda q, a, s: q["u"] - q["z"]},
        "u":   {"x": lambda q, a, s: (q["z"] - q["x"]) / s, "eps": lambda q, a, s: (q["eps"] * (a - s) - q["z"]) / a,
                "s": lambda q, a, s: (s * q["s"] * (s - a) - q["z"]) / a, "v": lambda q, a, s: q["z"] + q["v"]},
    }
    names = ["x", "eps", "s", "v", "u"]


    def rel_err(value, target):
        return float((value - target).abs().max() / target.abs().max())


    err = np.full((5, 5), np.nan)
    where = [["—"] * 5 for _ in range(5)]
    for i, row in enumerate(names):
        for j, col in enumerate(names):
            if col not in PRINTED[row]:
                continue
            e_vp = rel_err(PRINTED[row][col](vp, a, s), vp[row])
            e_rf = rel_err(PRINTED[row][col](rf, a_rf, s_rf), rf[row])
            err[i, j] = min(e_vp, e_rf)
            ok_vp, ok_rf = e_vp < 1e-9, e_rf < 1e-9
            where[i][j] = "both" if ok_vp and ok_rf else "VP" if ok_vp else "RF" if ok_rf else "✗"

    labels = [r"$\hat{x}$", r"$\hat{\epsilon}$", r"$s$", r"$\hat{v}$", r"$\hat{u}$"]
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    im = ax.imshow(np.log10(np.clip(err, 1e-17, None)), cmap="RdYlGn_r", vmin=-16, vmax=1)
    for i in range(5):
        for j in range(5):
            ax.text(j, i, where[i][j], ha="center", va="center", fontsize=9, fontweight="bold")
    ax.set_xticks(range(5), labels), ax.set_yticks(range(5), labels)
    ax.set(xlabel="expressed through (column)", ylabel="quantity (row)", title="Table 4.2 as printed: where it holds")
    ax.grid(False)
    fig.colorbar(im, label="log10 relative error (best of VP, RF)")
    plt.show()
    failing = [(names[i], names[j]) for i in range(5) for j in range(5) if where[i][j] == "✗"]
    print("entries that hold in neither coordinate system (row ← column):", failing)
    """),
    (M, r"""
    Fourteen entries hold (the $\hat{\mathbf{u}}$ entries in rectified-flow coordinates, the others in VP or both).
    Six do not, in any coordinates:

    | entry | printed | correct | note |
    |---|---|---|---|
    | $\mathbf{s}$ from $\hat{\mathbf{v}}$ | $(-\sigma\mathbf{z}+\alpha\hat{\mathbf{v}})/\sigma$ | $-(\sigma\mathbf{z}+\alpha\hat{\mathbf{v}})/\sigma$ | sign slip (VP) |
    | $\mathbf{s}$ from $\hat{\mathbf{u}}$ | $(-\alpha\hat{\mathbf{u}}+\mathbf{z})/\sigma$ | $-(\alpha\hat{\mathbf{u}}+\mathbf{z})/\sigma$ | sign slip (RF) |
    | $\hat{\mathbf{u}}$ from $\hat{\boldsymbol\epsilon}$ | $(\hat{\boldsymbol\epsilon}(\alpha-\sigma)-\mathbf{z})/\alpha$ | $(\hat{\boldsymbol\epsilon}(\alpha+\sigma)-\mathbf{z})/\alpha$, i.e. $(\hat{\boldsymbol\epsilon}-\mathbf{z})/\alpha$ in RF | factor $\alpha-\sigma$ for $\alpha+\sigma$ |
    | $\hat{\mathbf{u}}$ from $\mathbf{s}$ | $(\sigma\mathbf{s}(\sigma-\alpha)-\mathbf{z})/\alpha$ | $-(\sigma\mathbf{s}(\alpha+\sigma)+\mathbf{z})/\alpha$, i.e. $-(\sigma\mathbf{s}+\mathbf{z})/\alpha$ in RF | the same slip, through $\boldsymbol\epsilon=-\sigma\mathbf{s}$ |
    | $\hat{\mathbf{v}}$ from $\hat{\mathbf{u}}$ | $\hat{\mathbf{u}}-\mathbf{z}$ | $(\hat{\mathbf{u}}-(\sigma-\alpha)\mathbf{z})/(\alpha+\sigma)$ (VP) | see below |
    | $\hat{\mathbf{u}}$ from $\hat{\mathbf{v}}$ | $\mathbf{z}+\hat{\mathbf{v}}$ | $(\alpha+\sigma)\hat{\mathbf{v}}+(\sigma-\alpha)\mathbf{z}$ (VP) | see below |

    The first three are the errata recorded in `tests/test_parameterization.py`. The $\mathbf{s}\to\hat{\mathbf{u}}$
    entry inherits the $\alpha-\sigma$ slip of its neighbour. The $\hat{\mathbf{v}}\leftrightarrow\hat{\mathbf{u}}$ pair
    relates two parameterizations that live in different coordinates: with $\boldsymbol\epsilon=\sigma\mathbf{z}+\alpha\mathbf{v}$
    and $\mathbf{x}=\alpha\mathbf{z}-\sigma\mathbf{v}$ (VP), $\mathbf{u}=\boldsymbol\epsilon-\mathbf{x}=(\alpha+\sigma)\mathbf{v}+(\sigma-\alpha)\mathbf{z}$.
    The corrected forms, checked numerically (the $\hat{\mathbf{v}}\leftrightarrow\hat{\mathbf{u}}$ ones also through the
    library's own maps, `FlowParameterization.from_eps(VParameterization.to_eps(v))`):
    """),
    (C, r"""
    v_to_u_library = PARAMS["flow"].from_eps(PARAMS["v"].to_eps(vp["v"], z, lam), z, lam)
    checks = {
        "s ← v̂   = -(σz + αv̂)/σ          (VP)": rel_err(-(s * vp["z"] + a * vp["v"]) / s, vp["s"]),
        "s ← û   = -(αû + z)/σ            (RF)": rel_err(-(a_rf * rf["u"] + rf["z"]) / s_rf, rf["s"]),
        "û ← ε̂   = (ε̂ - z)/α              (RF)": rel_err((rf["eps"] - rf["z"]) / a_rf, rf["u"]),
        "û ← s   = -(σs + z)/α            (RF)": rel_err(-(s_rf * rf["s"] + rf["z"]) / a_rf, rf["u"]),
        "û ← v̂   = (α+σ)v̂ + (σ-α)z        (VP)": rel_err((a + s) * vp["v"] + (s - a) * vp["z"], rf["u"]),
        "v̂ ← û   = (û - (σ-α)z)/(α+σ)     (VP)": rel_err((rf["u"] - (s - a) * vp["z"]) / (a + s), vp["v"]),
        "û ← v̂ through the library's maps    ": rel_err(v_to_u_library, rf["u"]),
    }
    for label, value in checks.items():
        print(f"{label}   relative error {value:.1e}")
    """),
    (M, r"""
    ## Table 4.1: one posterior mean, six ways of writing it

    The generative transition $p(\mathbf{z}_s\mid\mathbf{z}_t)=q(\mathbf{z}_s\mid\mathbf{z}_t,\mathbf{x}=\hat{\mathbf{x}}_\theta)$ only
    needs the posterior mean $\mu_\theta(\mathbf{z}_t;s,t)$. Table 4.1 writes it for each parameterization (eqs. 4.1,
    4.2, 4.11, 4.20, 4.25, 4.38). We encode one imperfect prediction $\hat{\boldsymbol\epsilon}=\boldsymbol\epsilon+0.1\,\boldsymbol\xi$ in each
    parameterization's output space, evaluate the printed formula, and compare with the library's `posterior_mean`
    and with the common $\boldsymbol\epsilon$-form of eq. (A.29), `posterior_mean_eps`. The flow formula (4.38) holds
    in rectified-flow coordinates; its VP mean is the rescaling by $(\alpha_s+\sigma_s)$.
    """),
    (C, r"""
    lam_t = lam
    lam_s = lam_t + torch.empty_like(lam_t).uniform_(0.05, 3.0)  # s < t: less noisy
    eps_hat = eps + 0.1 * torch.randn_like(eps)
    sigma_t = s
    alpha_s, sigma_s = (c[:, None] for c in alpha_sigma(lam_s))
    a_ts, s2_ts = (c[:, None] for c in transition(lam_s, lam_t))
    x_hat = (z - sigma_t * eps_hat) / a
    out = {name: p.from_eps(eps_hat, z, lam_t) for name, p in PARAMS.items()}

    # rectified-flow coordinates for eq. (4.38)
    a_rf_s, s_rf_s = alpha_s / (alpha_s + sigma_s), sigma_s / (alpha_s + sigma_s)
    a_ts_rf = a_rf / a_rf_s
    s2_ts_rf = s_rf**2 - a_ts_rf**2 * s_rf_s**2
    z_rf = z / (a + s)

    printed_41 = {
        "x":      (a_ts * sigma_s**2 / sigma_t**2 * z + alpha_s * s2_ts / sigma_t**2 * out["x"], "eq. 4.1"),
        "eps":    (z / a_ts - s2_ts / (a_ts * sigma_t) * out["eps"], "eq. 4.2"),
        "score":  (z / a_ts + s2_ts / a_ts * out["score"], "eq. 4.11"),
        "energy": (z / a_ts - s2_ts / a_ts * out["energy"], "eq. 4.20"),
        "v":      ((1 - s2_ts) / a_ts * z - s2_ts * alpha_s / sigma_t * out["v"], "eq. 4.25"),
        "flow":   (((s_rf - s2_ts_rf) / (a_ts_rf * s_rf) * z_rf - s2_ts_rf * a_rf_s / s_rf * out["flow"])
                   * (alpha_s + sigma_s), "eq. 4.38 (RF), × (α_s + σ_s)"),
    }
    reference = posterior_mean_eps(z, eps_hat, lam_s, lam_t)  # eq. (A.29)
    rows = []
    for name, p in PARAMS.items():
        mu_lib = p.posterior_mean(out[name], z, lam_s, lam_t)
        mu_printed, where_from = printed_41[name]
        rows.append([name, where_from, f"{float((mu_printed - mu_lib).abs().max()):.1e}",
                     f"{float((mu_lib - reference).abs().max()):.1e}"])
    show_table(["parameterization", "printed formula", "max abs diff, printed vs library", "library vs eq. A.29"], rows)
    """),
    (M, r"""
    All six printed posterior means agree with each other to float64 precision: Table 4.1 has no errata.

    ## Table 4.3: translating the losses

    Squared errors in different spaces differ by a factor that depends on $t$ only. For example
    $\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2=\mathrm{SNR}(t)\,\|\mathbf{x}-\hat{\mathbf{x}}\|^2$ (eq. 4.62):
    $\boldsymbol\epsilon$-MSE *is* a weighted $\mathbf{x}$-MSE. We check each of the six off-diagonal entries by the ratio
    of the two sides.
    """),
    (C, r"""
    eps_hat = eps + 0.2 * torch.randn_like(eps)
    x_hat = (z - s * eps_hat) / a
    v, v_hat = a * eps - s * x, a * eps_hat - s * x_hat
    loss = {"x": (x - x_hat).pow(2).sum(1), "eps": (eps - eps_hat).pow(2).sum(1), "v": (v - v_hat).pow(2).sum(1)}
    a2, s2 = alpha_sigma(lam)[0] ** 2, alpha_sigma(lam)[1] ** 2
    TABLE_43 = {  # (row, column): (printed factor, equation)
        ("x", "eps"): (s2 / a2, "4.52"), ("x", "v"): (s2, "4.59"),
        ("eps", "x"): (a2 / s2, "4.62"), ("eps", "v"): (1 / a2, "4.65"),
        ("v", "x"): (s2 * (a2 / s2 + 1) ** 2, "4.70"), ("v", "eps"): (a2 * (s2 / a2 + 1) ** 2, "4.74"),
    }
    pretty = {"x": "x", "eps": "ε", "v": "v"}
    printed_factor = {"4.52": "σ²/α²", "4.59": "σ²", "4.62": "α²/σ²", "4.65": "1/α²", "4.70": "σ²(α²/σ² + 1)²",
                      "4.74": "α²(σ²/α² + 1)²"}
    rows = []
    for (row, col), (factor, eq) in TABLE_43.items():
        rel = float(((loss[row] - factor * loss[col]).abs() / loss[row]).max())
        r, c = pretty[row], pretty[col]
        rows.append([f"‖{r} − {r}̂‖² = {printed_factor[eq]} · ‖{c} − {c}̂‖²", f"eq. {eq}", f"{rel:.1e}",
                     "✓" if rel < 1e-9 else "✗"])
    show_table(["identity as printed", "", "max relative error", "holds"], rows)
    rel_fixed = float(((loss["eps"] - a2 * loss["v"]).abs() / loss["eps"]).max())
    print(f"corrected eq. 4.65, ‖ε − ε̂‖² = α² ‖v − v̂‖²: max relative error {rel_fixed:.1e}")
    """),
    (C, r"""
    order = torch.argsort(lam)
    fig, ax = plt.subplots(figsize=(6.5, 3.3))
    ax.semilogy(lam[order], (loss["eps"] / loss["v"])[order], "k.", ms=4,
                label=r"measured $\|\epsilon-\hat\epsilon\|^2 / \|v-\hat v\|^2$")
    ax.semilogy(lam[order], a2[order], "C2-", label=r"$\alpha_t^2$ (corrected)")
    ax.semilogy(lam[order], 1 / a2[order], "C3--", label=r"$1/\alpha_t^2$ (printed)")
    ax.set(xlabel=r"$\lambda_t$", title="Table 4.3, row ε, column v (eq. 4.65)")
    ax.legend()
    plt.show()
    """),
    (M, r"""
    One erratum: $\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2=\alpha_t^2\|\mathbf{v}-\hat{\mathbf{v}}\|^2$, not $1/\alpha_t^2$
    (from $\boldsymbol\epsilon=\sigma_t\mathbf{z}_t+\alpha_t\mathbf{v}$, eq. 4.33: $\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}=\alpha_t(\mathbf{v}-\hat{\mathbf{v}})$;
    the derivation of eq. 4.65 keeps $\mathbf{x}$ where $\hat{\mathbf{x}}$ belongs). The printed eqs. (4.59) and (4.74) —
    which hold — imply the $\alpha^2$ factor too. This is the factor behind the **v weighting** of notebook 03:
    $\|\mathbf{v}-\hat{\mathbf{v}}\|^2=\|\boldsymbol\epsilon-\hat{\boldsymbol\epsilon}\|^2/\alpha_t^2$.

    ## Why ε-prediction blows up near $t=1$ (eq. 4.50)

    The maps of Table 4.2 that *divide* by a schedule coefficient amplify the network's error. With
    $\boldsymbol\epsilon$-prediction the implied data estimate is

    $$\hat{\mathbf{x}}_\theta=\frac{\mathbf{z}_t-\sigma_t\hat{\boldsymbol\epsilon}_\theta}{\alpha_t},\qquad \alpha_t\xrightarrow{t\to1}0 \qquad\text{(eq. 4.50)},$$

    so an output error $\boldsymbol\delta$ becomes an error $\sigma_t\boldsymbol\delta/\alpha_t$ in $\hat{\mathbf{x}}$.
    Below, every parameterization's exact output is perturbed by the same small error ($\delta = 0.01$ RMS per coordinate,
    where all targets are of order one near $t=1$), and the library's `to_x` / `to_eps` map it back, along the cosine schedule.
    """),
    (C, r"""
    schedule = CosineSchedule(-15.0, 15.0)
    t = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    lam_grid = schedule.logsnr(t)
    M_ = 2000  # points per noise level
    x0 = torch.randn(M_, D, dtype=torch.float64)
    eps0 = torch.randn(M_, D, dtype=torch.float64)
    delta = 0.01 * torch.randn(M_, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    err_x = {name: [] for name in PARAMS}
    err_eps = {name: [] for name in PARAMS}
    for lam_j in lam_grid:
        lam_b = lam_j.expand(M_)
        z0 = diffuse(x0, lam_b, eps0)
        for name, p in PARAMS.items():
            noisy = p.from_eps(eps0, z0, lam_b) + delta  # the same output error for every parameterization
            err_x[name].append(float((p.to_x(noisy, z0, lam_b) - x0).pow(2).mean().sqrt()))
            err_eps[name].append(float((p.to_eps(noisy, z0, lam_b) - eps0).pow(2).mean().sqrt()))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    styles = {"x": "C0-", "eps": "C3-", "score": "C1--", "energy": "C5:", "v": "C2-", "flow": "C4--"}
    for name in PARAMS:
        axes[0].semilogy(t, err_x[name], styles[name], label=name)
        axes[1].semilogy(t, err_eps[name], styles[name], label=name)
    axes[0].set(xlabel="t (cosine schedule)", ylabel="RMS error", title=r"error of the implied $\hat{x}$ (output error 0.01)")
    axes[1].set(xlabel="t (cosine schedule)", title=r"error of the implied $\hat{\epsilon}$ (output error 0.01)")
    axes[0].legend(ncol=2)
    fig.tight_layout()
    plt.show()
    i_end = len(t) - 1
    print(f"at t = 1 (λ = {lam_grid[-1]:.0f}):  x̂ error of eps {err_x['eps'][i_end]:.2f}, "
          f"score {err_x['score'][i_end]:.2f}, v {err_x['v'][i_end]:.3f}, flow {err_x['flow'][i_end]:.3f}, x {err_x['x'][i_end]:.3f}")
    print(f"at t = 0 (λ = {lam_grid[0]:.0f}):  ε̂ error of x {err_eps['x'][0]:.2f}, v {err_eps['v'][0]:.3f}, "
          f"eps {err_eps['eps'][0]:.3f}")
    """),
    (M, r"""
    * **Left.** $\boldsymbol\epsilon$-, score- and energy-prediction amplify the error of $\hat{\mathbf{x}}$ by
      $\sigma_t/\alpha_t$ (or $\sigma_t^2/\alpha_t$), which explodes as $\alpha_t\to0$ at $t\to1$ — eq. (4.50). Velocity
      ($\hat{\mathbf{x}}=\alpha_t\mathbf{z}_t-\sigma_t\hat{\mathbf{v}}$) and flow ($\hat{\mathbf{x}}=\mathbf{z}^{\rm rf}-\sigma^{\rm rf}\hat{\mathbf{u}}$)
      never divide by $\alpha_t$: their error stays below $\delta$. The practical fix for $\boldsymbol\epsilon$-models is to clip
      $\hat{\mathbf{x}}$ to the data range while sampling (`predict(..., clip_x=True)`, as the Table 4.2 caption suggests).
    * **Right.** The mirror image: $\mathbf{x}$-prediction's implied $\hat{\boldsymbol\epsilon}=(\mathbf{z}_t-\alpha_t\hat{\mathbf{x}})/\sigma_t$
      divides by $\sigma_t\to0$ at $t\to0$ — the "weak supervision signal at low noise levels" of §4.1. The velocity
      parameterizations are well conditioned at both ends, the argument the paper gives for adopting them.
    """),
]
