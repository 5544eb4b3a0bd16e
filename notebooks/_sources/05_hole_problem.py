"""Source of 05_hole_problem.ipynb (built by notebooks/_build.py)."""

# ruff: noqa: E501  (markdown prose and tables; the code cells are linted in the .ipynb files)

M, C = "markdown", "code"

CELLS = [
    (M, r"""
    # 05 · The hole problem: a VAE's prior against its aggregate posterior, and a diffusion model (Figure 2.4)

    A VAE with prior $p(\mathbf z)=\mathcal N(0,\mathbf I)$ is trained through its encoder $q(\mathbf z\mid\mathbf x)$; what the
    decoder actually sees during training is the **aggregate posterior** (eq. 2.35)

    $$q(\mathbf z)=\int q(\mathbf z\mid\mathbf x)\,p_{\mathcal D}(\mathbf x)\,d\mathbf x=\frac1N\sum_{i=1}^N q(\mathbf z\mid\mathbf x_i).$$

    Nothing forces $q(\mathbf z)$ to fill the prior. Where the prior has mass but $q(\mathbf z)$ has none — a **hole** — the
    decoder was never trained, and samples drawn from the prior there land off the data (§2.5). A diffusion model has no
    such gap: its "encoder" is the fixed forward process, which makes $q(\mathbf z_1)=\mathcal N(0,\mathbf I)=p(\mathbf z_1)$
    **by construction** (§3.1), and the reverse process is trained on exactly the marginals $q(\mathbf z_t)$ it will visit.

    We reproduce Figure 2.4 on the five-cluster toy set with a small VAE with a 2-D latent (a plain PyTorch loop), and train a
    diffusion model on the same data with `vdmlab` (`MLP` + `DiffusionModule` + `lightning.Trainer`). Both take seconds on a CPU.
    """),
    (C, r"""
    %matplotlib inline
    import functools
    import logging
    import math
    import tempfile
    import warnings

    import lightning as L
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from IPython.display import Markdown, display
    from torch import nn

    from vdmlab.analysis.report import markdown_table
    from vdmlab.data import Toy2DDataModule, levels_to_values
    from vdmlab.diffusion import likelihood, sampling
    from vdmlab.diffusion.parameterization import VParameterization
    from vdmlab.diffusion.process import alpha_sigma, diffuse
    from vdmlab.diffusion.schedules import CosineSchedule, logsnr_grid
    from vdmlab.diffusion.weighting import SigmoidWeighting
    from vdmlab.models import MLP
    from vdmlab.module import DiffusionModule

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


    def show_table(header, rows):
        display(Markdown(markdown_table(header, rows)))


    def log_mixture(z, means, variances):
        # log of (1/N) Σ_i N(z; means_i, diag(variances_i)) for z [M, 2], in chunks of M
        out = []
        for chunk in z.split(2048):
            d = chunk[:, None, :] - means[None]
            log_n = -0.5 * (d**2 / variances[None] + variances.log()[None] + math.log(2 * math.pi)).sum(-1)
            out.append(torch.logsumexp(log_n, dim=1) - math.log(len(means)))
        return torch.cat(out)


    def log_normal(z):
        # log N(z; 0, I) in 2-D
        return -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
    """),
    (M, r"""
    ## The data

    `Toy2DDataModule(name="five_clusters", batch_size=128, eval_batch_size=None, num_workers=0)`: an equal-weight mixture of five Gaussians (std 0.08) on a circle of radius 0.6,
    quantised to a 256-level grid, with its analytic density `log_prob`. Both models train on the same 8,000 points.
    """),
    (C, r"""
    data = Toy2DDataModule(name="five_clusters", n_train=8000, batch_size=512, seed=0, eval_batch_size=None, num_workers=0)
    data.setup()
    x_train = levels_to_values(data.train_set.levels, data.num_levels)  # [8000, 2] in [-1, 1]
    x_test = levels_to_values(data.test_set.levels, data.num_levels)
    # "off the data": log p(x) below the 1st percentile of held-out data (so 1% of real data is off by definition)
    threshold = float(torch.quantile(data.log_prob(x_test.double()), 0.01))
    print(f"{len(x_train)} training points, K = {data.num_levels} levels; off-data threshold log p(x) < {threshold:.2f}")
    """),
    (M, r"""
    ## A small VAE with a 2-D latent

    Encoder and decoder are two-hidden-layer MLPs (64 units); the decoder is Gaussian with one learned noise scale. The
    negative ELBO, $-\mathbb E_q[\log p(\mathbf x\mid\mathbf z)]+D_{\rm KL}(q(\mathbf z\mid\mathbf x)\,\|\,\mathcal N(0,\mathbf I))$, is minimised
    with Adam for 2,000 steps of 512 points.
    """),
    (C, r"""
    def mlp(n_in, n_out, hidden=64):
        return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = mlp(2, 4), mlp(2, 2)
            self.log_scale = nn.Parameter(torch.tensor(math.log(0.1)))  # decoder noise std

        def encode(self, x):
            mean, log_var = self.encoder(x).chunk(2, dim=-1)
            return mean, log_var

        def loss(self, x):
            mean, log_var = self.encode(x)
            z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
            nll = 0.5 * ((x - self.decoder(z)) / self.log_scale.exp()).pow(2).sum(-1) + 2 * self.log_scale + math.log(2 * math.pi)
            kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var)  # per latent dimension
            return nll.mean() + kl.sum(-1).mean(), kl.mean(0)


    torch.manual_seed(0)
    vae = VAE()
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    history = []
    for _ in range(2000):
        batch = x_train[torch.randint(0, len(x_train), (512,))]
        loss, kl_per_dim = vae.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss))
    vae.eval()
    print(f"VAE: final -ELBO {np.mean(history[-100:]):.3f} nats, KL per latent dimension {kl_per_dim.detach().numpy().round(2)}, "
          f"decoder std {float(vae.log_scale.exp()):.3f}")
    """),
    (M, r"""
    Both latent dimensions carry information here (the paper's Figure 2.4 also shows a run where one of them collapses to
    the prior — a different failure of the same objective).

    ## Figure 2.4: prior against aggregate posterior

    $q(\mathbf z)$ is a mixture of one Gaussian per training point; we evaluate it on a grid with 2,000 of them.
    """),
    (C, r"""
    torch.manual_seed(1)
    with torch.no_grad():
        post_mean, post_log_var = vae.encode(x_train[:2000])
        post_var = post_log_var.exp()
        g = torch.linspace(-3.5, 3.5, 141)
        zz = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
        q_grid = log_mixture(zz, post_mean, post_var).exp().reshape(len(g), len(g))
        p_grid = log_normal(zz).exp().reshape(len(g), len(g))
        recon = vae.decoder(post_mean[:300] + post_var[:300].sqrt() * torch.randn(300, 2))
        z_prior = torch.randn(4000, 2)
        vae_samples = vae.decoder(z_prior)
        log_ratio = log_mixture(z_prior, post_mean, post_var) - log_normal(z_prior)  # log q(z)/p(z) at prior samples
        in_hole = log_ratio < math.log(0.1)
        off_data = data.log_prob(vae_samples.double()) < threshold

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.7))
    ax = axes[0]
    ax.scatter(*x_train[:1000].T, s=2, color="0.6", label="data")
    ax.scatter(*recon.T, s=10, facecolors="none", edgecolors="C3", lw=0.7, label="reconstructions")
    ax.scatter(*vae_samples[:300].T, s=10, facecolors="none", edgecolors="C0", lw=0.7, label="samples")
    ax.set(title="data, reconstructions, samples", xlim=(-1, 1), ylim=(-1, 1), aspect="equal")
    ax.legend(fontsize=7, loc="lower center")
    ax = axes[1]
    ax.contourf(g, g, q_grid, levels=20, cmap="Reds")
    ax.contour(g, g, p_grid, levels=6, colors="C0", linewidths=0.8)
    ax.set(title=r"prior $p(z)$ (blue) vs aggregate $q(z)$", aspect="equal", xlabel="$z_1$", ylabel="$z_2$")
    shown = slice(0, 1500)  # plot a subset; the statistics below use all 4000 prior samples
    ax = axes[2]
    ax.scatter(*z_prior[shown][~in_hole[shown]].T, s=2, color="0.5", label="q(z)/p(z) ≥ 0.1")
    ax.scatter(*z_prior[shown][in_hole[shown]].T, s=3, color="C3", label="in a hole: q(z)/p(z) < 0.1")
    ax.set(title=r"samples $z \sim p(z)$", xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", xlabel="$z_1$")
    ax.legend(fontsize=7, loc="lower center")
    ax = axes[3]
    ax.scatter(*x_train[:1000].T, s=2, color="0.8")
    ax.scatter(*vae_samples[shown][~in_hole[shown]].T, s=2, color="0.4")
    ax.scatter(*vae_samples[shown][in_hole[shown]].T, s=3, color="C3")
    ax.set(title="their decoded samples", xlim=(-1, 1), ylim=(-1, 1), aspect="equal")
    fig.tight_layout()
    plt.show()
    print(f"prior mass in holes: {float(in_hole.float().mean()):.1%}; samples off the data: {float(off_data.float().mean()):.1%} "
          f"overall, {float(off_data[in_hole].float().mean()):.1%} of those decoded from holes, "
          f"{float(off_data[~in_hole].float().mean()):.1%} of the others")
    """),
    (M, r"""
    The encoder maps the five clusters to five separated blobs, leaving a hole **at the centre of the prior**, where
    $p(\mathbf z)$ is largest. Prior samples from the hole (red) decode to points between the clusters: the decoder
    interpolates there, because no training latent ever came from that region. This is the distribution shift between
    training ($\mathbf z\sim q(\mathbf z)$) and sampling ($\mathbf z\sim p(\mathbf z)$) of §2.5.

    ## A diffusion model on the same data

    `vdmlab`'s residual `MLP` denoiser (conditioned on $\lambda$), the cosine schedule on $[\lambda_{\min},\lambda_{\max}]=[-10,10]$,
    the sigmoid weighting and $\mathbf v$-prediction, trained with `DiffusionModule` and a `lightning.Trainer` for 800 steps of
    512 points; samples come from the EMA weights through `vdmlab.diffusion.sampling.ancestral` (100 steps), decoded to the
    256 data levels.
    """),
    (C, r"""
    L.seed_everything(0, verbose=False)
    schedule = CosineSchedule(-10.0, 10.0)
    module = DiffusionModule(
        net=MLP(data_dim=2, hidden=128, depth=3, emb_dim=64),
        schedule=schedule,
        weighting=SigmoidWeighting(2.0),
        parameterization=VParameterization(),
        num_levels=data.num_levels,
        data_shape=data.data_shape,
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),
        ema_decay=0.99,
        sampler={"fn": sampling.ancestral, "steps": 100, "clip_x": True},
        seed=0,
    )
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_steps=800, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0, default_root_dir=root)
        trainer.fit(module, datamodule=data)
    module.eval()
    diffusion_samples = module.sample(4000, steps=100, generator=torch.Generator().manual_seed(0))
    diffusion_off = data.log_prob(diffusion_samples.double()) < threshold

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.7), sharex=True, sharey=True)
    for ax, (name, points) in zip(axes, {"held-out data": x_test, "VAE samples": vae_samples,
                                         "diffusion samples": diffusion_samples}.items()):
        ax.scatter(*points[:1000].T, s=2, color="C0" if "diffusion" in name else "C3" if "VAE" in name else "0.4")
        ax.set(title=name, xlim=(-1, 1), ylim=(-1, 1), aspect="equal")
    fig.tight_layout()
    plt.show()
    """),
    (M, r"""
    ## The diffusion model's prior *is* its aggregate posterior

    The diffusion model's deepest latent is $\mathbf z_1=\alpha_1\mathbf x+\sigma_1\boldsymbol\epsilon$ with $\alpha_1^2=\operatorname{sigmoid}(-10)\approx4.5\times10^{-5}$:
    its aggregate posterior $q(\mathbf z_1)=\frac1N\sum_i\mathcal N(\alpha_1\mathbf x_i,\sigma_1^2\mathbf I)$ is the prior up to a
    KL of at most $\mathbb E_{\mathbf x}D_{\rm KL}(q(\mathbf z_1\mid\mathbf x)\,\|\,\mathcal N(0,\mathbf I))$ (`likelihood.prior_kl`, the prior term of
    eq. 3.60). And every intermediate level is trained on exactly the latents it is later sampled from: the top row shows the
    forward marginals $q(\mathbf z_t)$ (`diffuse` applied to the data), the bottom row the model's $p(\mathbf z_t)$, obtained by
    running the ancestral sampler from $\mathbf z_1\sim\mathcal N(0,\mathbf I)$ only down to level $t$.
    """),
    (C, r"""
    steps = 100
    grid = logsnr_grid(schedule, steps)  # λ(1) < ... < λ(0), the sampler's levels
    denoise = module.parameterization.denoiser(module.ema.net, clip_x=True)
    levels = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    gen = torch.Generator().manual_seed(3)
    x_sub = x_train[:2000]
    z_start = torch.randn(1000, 2, generator=gen)
    circle = 2 * torch.stack([torch.cos(torch.linspace(0, 2 * math.pi, 200)), torch.sin(torch.linspace(0, 2 * math.pi, 200))])

    fig, axes = plt.subplots(2, len(levels), figsize=(13, 4.6), sharex=True, sharey=True)
    for j, t_level in enumerate(levels):
        k = round((1 - t_level) * steps)  # number of reverse steps from t = 1 down to t_level
        lam = grid[k]
        z_forward = diffuse(x_sub[:1000], lam.expand(1000), torch.randn(1000, 2, generator=gen))
        z_model = sampling.ancestral(denoise, z_start, grid[: k + 1], generator=gen) if k > 0 else z_start
        for row, (z, color) in enumerate(((z_forward, "0.3"), (z_model, "C0"))):
            ax = axes[row, j]
            ax.scatter(*z.T, s=1, color=color, alpha=0.5)
            ax.plot(*circle, "k--", lw=0.6)
            ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
        axes[0, j].set_title(f"t = {t_level:.1f}, λ = {float(lam):.1f}", fontsize=8)
    axes[0, 0].set_ylabel(r"forward $q(z_t)$")
    axes[1, 0].set_ylabel(r"model $p(z_t)$")
    fig.tight_layout()
    plt.show()
    """),
    (C, r"""
    with torch.no_grad():
        lam_1 = torch.tensor(schedule.logsnr_min)
        alpha_1, sigma_1 = alpha_sigma(lam_1)
        kl_bound = float(likelihood.prior_kl(x_train, lam_1.expand(len(x_train))).mean())

        def kl_to_prior(means, variances, n=8000):
            # Monte-Carlo KL(q ‖ N(0, I)) of the mixture q = (1/N) Σ N(means_i, variances_i), with its standard error
            i = torch.randint(0, len(means), (n,), generator=gen)
            z = means[i] + variances[i].sqrt() * torch.randn(n, 2, generator=gen)
            log_ratio = log_mixture(z, means, variances) - log_normal(z)
            return float(log_ratio.mean()), float(log_ratio.std()) / math.sqrt(n)

        # the same estimators for both models; the diffusion model's q(z_1) = (1/N) Σ N(α_1 x_i, σ_1² I)
        comp_mean, comp_var = alpha_1 * x_sub, (sigma_1**2).expand(x_sub.shape)
        kl_diffusion, se_diffusion = kl_to_prior(comp_mean, comp_var)
        ratio_diffusion = log_mixture(z_prior, comp_mean, comp_var) - log_normal(z_prior)
        hole_diffusion = float((ratio_diffusion < math.log(0.1)).float().mean())
        kl_vae, se_vae = kl_to_prior(post_mean, post_var)

    show_table(
        ["", "KL(q(z) ‖ p(z)), nats (MC ± 2 s.e.)", "prior mass in holes (q/p < 0.1)", "mean log p_data(sample)",
         "samples off the data"],
        [["VAE (z)", f"{kl_vae:.3f} ± {2 * se_vae:.3f}", f"{float(in_hole.float().mean()):.1%}",
          f"{float(data.log_prob(vae_samples.double()).mean()):.2f}", f"{float(off_data.float().mean()):.1%}"],
         ["diffusion (z₁)", f"{kl_diffusion:.1e} ± {2 * se_diffusion:.1e} (bound: {kl_bound:.1e})", f"{hole_diffusion:.1%}",
          f"{float(data.log_prob(diffusion_samples.double()).mean()):.2f}", f"{float(diffusion_off.float().mean()):.1%}"],
         ["held-out data", "—", "—", f"{float(data.log_prob(x_test.double()).mean()):.2f}", "1.0% (by definition)"]],
    )
    """),
    (M, r"""
    **Take-aways.** The VAE's aggregate posterior leaves a hole where its prior is densest, and the samples decoded from
    there fall between the clusters. The diffusion model's aggregate posterior at $t=1$ equals its prior up to a KL below
    $10^{-5}$ nats — fixed by the forward process, not learned — and each reverse step is trained on the very marginals
    $q(\mathbf z_t)$ it visits, so sampling does not drift off the data (§2.5, §3.1). The remaining sample error of the
    diffusion model is the approximation error of a briefly trained denoiser, not a prior mismatch.
    """),
]
