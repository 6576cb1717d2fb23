"""The report folder: ``report.md`` with every table, PNG figures, raw numbers as CSV/JSON.

    write_report(out, results, meta)    # results as returned by the experiments in run_all

Tables are plain Markdown (no extra dependency); figures use matplotlib's Agg backend and
are skipped with a note in the report when matplotlib is not installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table, floats rounded to ``digits``."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _pm(mean: pd.Series, sd: pd.Series, digits: int = 3) -> list[str]:
    return [f"{m:.{digits}f}" + ("" if not np.isfinite(s) or abs(s) < 5e-4 else f" ± {s:.{digits}f}")
            for m, s in zip(mean, sd)]


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


# ----------------------------------------------------------------------------- sections


GENERATORS = ("expert", "coherent", "multi")


def reconstruction_section(df: pd.DataFrame, out: Path, plt, ranks: dict | None = None) -> str:
    df.to_csv(out / "reconstruction.csv", index=False)
    k = int(df["draws"].max())
    show = df.assign(**{"R² single draw": _pm(df["r2"], df["r2_sd"])})[
        ["target", "conditions", "method", "R² single draw", "r2_of_mean10", "r2_of_mean", "var_pct", "energy_score",
         "crps", "cov50", "cov90"]].rename(columns={
            "r2_of_mean10": "R² mean of 10", "r2_of_mean": f"R² mean of {k} / point", "var_pct": "output var %",
            "energy_score": "energy ↓", "crps": "CRPS ↓", "cov50": "cov 50%", "cov90": "cov 90%"})
    text = ["## 1. Reconstruction (Table 1 + baselines)", "",
            "R² = sklearn `r2_score(multioutput=\"variance_weighted\")` on the standardised latents of the "
            f"complete test patients, from K = {k} draws per patient. *R² single draw*: mean ± sd over the first 10 "
            "draws' R² (the paper's metric); *R² mean of 10* and *of K*: of the mean of 10 and of all K draws (the "
            "mean of 10 carries Monte-Carlo error of about (1 − R²)/10, so compare point estimates with the mean of "
            "K); *output var %*: mean per-patient variance across draws as % of the real variance; *energy*: the "
            "energy score of the K draws, *CRPS*: the CRPS of each dimension (both `scoringrules`, fair estimator; "
            "proper scores of the whole predictive distribution, lower is better; for a point imputer the mean "
            "Euclidean and absolute error); *cov 50% / 90%*: fraction of true values inside the central 50% / 90% "
            f"interval of the K draws, which a calibrated sampler puts at {(k - 1) * 0.5 / (k + 1):.3f} / "
            f"{(k - 1) * 0.9 / (k + 1):.3f} ((K − 1)p/(K + 1)). Baselines are fitted on the training patients with "
            "the same conditions: *gauss* = ridge + N(0, Σ) of the training residuals, *resboot* = ridge + a random "
            "training residual, *MICE draws* = `IterativeImputer(sample_posterior=True)`; MOFA+ (`mofapy2`, 30 "
            "factors, ARD weights without spike-and-slab, one view per modality) imputes the target view from the "
            "factor posterior given the observed views.", "",
            goals_table(df), "### All conditioning sets and methods", "", markdown_table(show), ""]
    if plt is not None and ranks:
        text += [rank_figure(ranks, out, plt), ""]
    return "\n".join(text)


def _ours(sub: pd.DataFrame) -> pd.Series | None:
    for m in ("coherent", "expert"):
        if (sub.method == m).any():
            return sub[sub.method == m].iloc[0]
    return None


def goals_table(df: pd.DataFrame) -> str:
    """Per target and conditioning set, the default generator (Coherent Denoising; the single
    expert for one condition) against the distributional baselines and ridge, with the targets
    of issue 10: (a) energy score <= 0.97 x the best of gauss, resboot and MICE draws, (b) R^2 of
    the K-draw mean >= ridge - 0.005, (c) 50% and 90% coverage within 0.03 of calibrated,
    (d) with two or more conditions, at least as good as the better single expert on energy and
    R^2 of the mean."""
    rows = []
    for (t, c), sub in df.groupby(["target", "conditions"], sort=False):
        ours = _ours(sub)
        base = sub[sub.method.isin(("gauss", "resboot", "MICE draws"))]
        ridge = sub[sub.method == "ridge"]
        if ours is None or base.empty or ridge.empty:
            continue
        best = base.loc[base["energy_score"].idxmin()]
        r2_ridge = float(ridge["r2_of_mean"].iloc[0])
        row = {"target": t, "from": c, "R² mean (ours / ridge)": f"{ours.r2_of_mean:.3f} / {r2_ridge:.3f}",
               "energy (ours / best baseline)": f"{ours.energy_score:.3f} / {best.energy_score:.3f} ({best.method})",
               "ratio": ours.energy_score / best.energy_score,
               "cov 50% / 90%": f"{ours.cov50:.3f} / {ours.cov90:.3f}",
               "(a)": "yes" if ours.energy_score <= 0.97 * best.energy_score else "no",
               "(b)": "yes" if ours.r2_of_mean >= r2_ridge - 0.005 else "no",
               "(c)": "yes" if (abs(ours.cov50 - ours.cov50_calibrated) <= 0.03
                                and abs(ours.cov90 - ours.cov90_calibrated) <= 0.03) else "no"}
        singles = df[(df.target == t) & (df.method == "expert") & df.conditions.isin(c.split("+"))]
        if "+" in c and len(singles):
            ok = (ours.energy_score <= singles["energy_score"].min()) and (ours.r2_of_mean >= singles["r2_of_mean"].max())
            row["(d)"] = "yes" if ok else (f"no (best single: ES {singles['energy_score'].min():.3f}, "
                                           f"R² {singles['r2_of_mean'].max():.3f})")
        else:
            row["(d)"] = ""
        rows.append(row)
    if not rows:
        return ""
    return "\n".join(["### Against the distributional baselines (issue 10's goals a-d)", "",
                      markdown_table(pd.DataFrame(rows)), ""])


def rank_figure(ranks: dict, out: Path, plt) -> str:
    """Rank (PIT) histograms of the generators and the residual bootstrap, each target from
    all the other modalities: flat = calibrated, U = too narrow, hump = too wide."""
    targets = list(dict.fromkeys(t for t, _, _ in ranks))
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.6), squeeze=False)
    for ax, t in zip(axes[0], targets):
        conds = max((c for tt, c, _ in ranks if tt == t), key=lambda c: c.count("+"))
        for m in ("coherent", "multi", "resboot"):
            h = ranks.get((t, conds, m))
            if h is not None:
                ax.step(np.arange(len(h)), h * len(h), where="mid", label=m)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{t} from {conds}")
        ax.set_xlabel("rank of the truth among the draws")
        ax.set_ylabel("frequency x (K + 1)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rank_histograms.png", dpi=110)
    plt.close(fig)
    return "![rank histograms](rank_histograms.png)"


def feature_section(df: pd.DataFrame, out: Path) -> str:
    df.to_csv(out / "feature_space.csv", index=False)
    return "\n".join([
        "## 1b. Feature space (what a user receives)", "",
        "Variance-weighted R² over observed cells of the target's preprocessed features on the test "
        "patients: *decoded mean*, what `cohere generate --decode --aggregate` returns (the mean of "
        "the decoded Coherent Denoising draws plus the experts' residual heads: ridge from each "
        "condition latent to what the encoder cannot represent, features − decode(encode(features)), "
        "fitted on the training patients and composed like the consensus), their mean stacked with "
        "the experts' ridge from the condition latents to the features by the weight beta each chose "
        "on its held-out rows (the feature stacking); *decoded mean, no feature stacking*, the same "
        "without that stacking; *decoded latent mean*, without the residual heads either; *mean latent, decoded*, decode(the mean latent) plus the "
        "residual heads (the decoder is not linear, so it is not the mean of the decoded draws); "
        "the decoded latent mean plus one joint residual ridge from all the "
        "condition latents; ridge straight from the condition latents to the features; ridge to the "
        "target latent, decoded; and the encoder's own ceiling decode(encode(x)).", "",
        markdown_table(df), ""])


def privacy_section(res, out: Path, plt) -> str:
    res.table.to_csv(out / "privacy_runs.csv", index=False)
    res.dcr.to_csv(out / "privacy_dcr.csv", index=False)
    g = res.table.groupby(["target", "method"], sort=False)
    summ = g[["precision", "recall", "f1", "energy_distance"]].agg(["mean", "std"])
    rows = []
    for (t, m), r in summ.iterrows():
        rows.append({"target": t, "method": m, "precision": r[("precision", "mean")],
                     "recall": r[("recall", "mean")],
                     "F1": _pm([r[("f1", "mean")]], [r[("f1", "std")]])[0],
                     "√energy distance": _pm([r[("energy_distance", "mean")]], [r[("energy_distance", "std")]])[0]})
    text = ["## 6. Privacy: unconditional generation (Table 3)", "",
            "Against the training latents of each modality (subsampled to the reference size): k-NN "
            "precision/recall (k = 10, as `prdc`) and their F1, and √(energy distance) (V-statistic, as "
            "`dcor`). *multi (all masked)*: the multi-condition model with every condition masked. "
            "*experts (zero condition)*: experts are conditional models with no unconditional mode; here "
            "the Coherent Denoising ensemble of the experts into the target is given an all-zero condition "
            "vector (the training mean of each standardised source latent), i.e. the conditional "
            "distribution of an *average* patient, so low recall is expected by construction. "
            "*held-out real*: the real test patients scored the same way (the reference a generator that "
            "learned the distribution should match). Mean ± sd over runs.", "",
            markdown_table(pd.DataFrame(rows)), "",
            "Distance to closest record (first run): generated samples vs held-out real patients, distance "
            "to the nearest training patient; *passes* when the fraction of generated samples below the "
            "held-out 5% quantile is within sampling tolerance of 5%.", "",
            markdown_table(res.dcr), ""]
    if plt is not None and res.samples:
        from sklearn.decomposition import PCA

        targets = list(res.reference)
        methods = list(dict.fromkeys(m for _, m in res.samples))
        fig, axes = plt.subplots(len(methods), len(targets), figsize=(4 * len(targets), 3.6 * len(methods)),
                                 squeeze=False)
        for j, t in enumerate(targets):
            pca = PCA(2).fit(res.reference[t])
            ref = pca.transform(res.reference[t])
            for i, m in enumerate(methods):
                ax = axes[i][j]
                ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, label="train (real)")
                if (t, m) in res.samples:
                    gen = pca.transform(res.samples[(t, m)])
                    ax.scatter(gen[:, 0], gen[:, 1], s=2, alpha=0.3, label="generated")
                ax.set_title(f"{t}: {m}", fontsize=9)
        axes[0][0].legend(markerscale=5, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "privacy_pca.png", dpi=110)
        plt.close(fig)
        text += ["![privacy PCA](privacy_pca.png)", ""]
    return "\n".join(text)


def manifold_section(res, out: Path, plt) -> str:
    rows = []
    for k, v in res.embeddings.items():
        rows += [{"data": k, "sample": i, "cancer_type": t, "x": a, "y": b}
                 for i, (t, (a, b)) in enumerate(zip(res.cancer_type, v))]
    pd.DataFrame(rows).to_csv(out / "manifold.csv", index=False)
    text = [f"## 2. Manifold ({res.method.upper()})", "",
            f"Real test patients (all modalities concatenated) and generated ones (each modality generated "
            f"from all the others, first draw), coloured by cancer type; the {res.method.upper()} map is "
            "fitted on the real patients and the generated ones are projected with it.", ""]
    if plt is None:
        return "\n".join(text + ["(figure skipped: matplotlib not installed)", ""])
    panels = list(res.embeddings)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False, sharex=True,
                             sharey=True)
    types = sorted(set(res.cancer_type))
    cmap = plt.get_cmap("tab20")
    for ax, k in zip(axes[0], panels):
        e = res.embeddings[k]
        for i, t in enumerate(types):
            sel = res.cancer_type == t
            ax.scatter(e[sel, 0], e[sel, 1], s=5, color=cmap(i % 20), label=t)
        ax.set_title(k)
    axes[0][-1].legend(fontsize=6, markerscale=2, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "manifold.png", dpi=110)
    plt.close(fig)
    return "\n".join(text + ["![manifold](manifold.png)", ""])


def signal_section(per_run: pd.DataFrame, summary: pd.DataFrame, out: Path, plt) -> str:
    per_run.to_csv(out / "signal_runs.csv", index=False)
    summary.to_csv(out / "signal.csv", index=False)
    show = summary.assign(**{"macro F1": _pm(summary["macro_f1"], summary["macro_f1_sd"]),
                             "balanced accuracy": _pm(summary["balanced_accuracy"], summary["balanced_accuracy_sd"])})
    cols = ["modality", "task", "data", "macro F1", "balanced accuracy"] + \
        (["p_wilcoxon_f1"] if "p_wilcoxon_f1" in show else [])
    text = ["## 3. Signal preservation", "",
            "Per modality, a random forest trained on the real training latents of that modality predicts "
            "cancer type and stage of the test patients from their real latents, or from latents generated "
            "from all other modalities (run k = draw k; the forest is trained once). p: paired Wilcoxon "
            "signed-rank test of generated vs real macro F1 over the runs (the real score is constant).", "",
            markdown_table(show[cols]), ""]
    return "\n".join(text)


def downstream_section(per_run: pd.DataFrame, table: pd.DataFrame, out: Path, plt, forests: str,
                       against_knn: pd.DataFrame | None = None, draws: int | None = None,
                       resamples: int = 2000) -> str:
    per_run.to_csv(out / "downstream_runs.csv", index=False)
    table.to_csv(out / "downstream.csv", index=False)
    agg = per_run.groupby(["removed", "condition"], sort=False)[["stage_f1", "os_cindex"]].agg(["mean", "std"])
    flat = pd.DataFrame({"removed": [r for r, _ in agg.index], "condition": [c for _, c in agg.index],
                         "stage macro F1": _pm(agg[("stage_f1", "mean")], agg[("stage_f1", "std")].fillna(0)),
                         "OS C-index": _pm(agg[("os_cindex", "mean")], agg[("os_cindex", "std")].fillna(0))})
    text = ["## 4. Downstream completion (Table 2)", "",
            "A multimodal stage classifier and a random survival forest, trained on the real training "
            "patients (latents of every modality, NaN where missing, + one-hot cancer type), evaluated on "
            "the complete test patients with the modalities of *removed* deleted (ablated), generated "
            "(multi / coherent, from the remaining modalities by `cohere complete`"
            + (f" with K = {draws} draws per generated cell" if draws else "") + "; run k = draw k; *MI pooled*: the forests' "
            "class probabilities and risk scores averaged over the K completed copies, as multiple "
            "imputation combines them; *mean of draws*: completed once with the mean of the K draws, as "
            "`cohere complete` writes it) or imputed (training mean, KNN mean of 10 neighbours). " f"Forests: {forests}.", "",
            markdown_table(flat), "", "Ablation drop (ablated − full) and gain of each completion (completed − "
            "ablated), means over runs:", "", markdown_table(table), ""]
    if against_knn is not None and len(against_knn):
        against_knn.to_csv(out / "downstream_vs_knn.csv", index=False)
        wide = against_knn.assign(value=[f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in zip(
            against_knn["minus knn"], against_knn["95% low"], against_knn["95% high"])])
        wide = wide.pivot_table(index=["removed", "completion"], columns="metric", values="value", aggfunc="first",
                                sort=False).reset_index().rename(columns={"stage_f1": "stage macro F1 − KNN",
                                                                          "os_cindex": "OS C-index − KNN"})
        text += ["Generated completion minus KNN imputation on the same patients, with a paired bootstrap 95% "
                 f"interval over the test patients (`scipy.stats.bootstrap`, percentile, {resamples:,} resamples of the "
                 "patients; the forests and the completions fixed). An interval that contains 0 is a difference "
                 "that the choice of test patients alone can produce:", "", markdown_table(wide), ""]
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        conds = ["ablated", "multi", "coherent", "coherent (MI pooled)", "mean-imputed", "knn-imputed"]
        means = per_run.groupby(["removed", "condition"], sort=False)[["stage_f1", "os_cindex"]].mean()
        removed = [r for r in dict.fromkeys(per_run["removed"]) if r != "none" and (r, "ablated") in means.index]
        for ax, metric in zip(axes, ("stage_f1", "os_cindex")):
            x = np.arange(len(removed))
            for i, c in enumerate(conds):
                vals = [means.loc[(r, c)][metric] if (r, c) in means.index else np.nan for r in removed]
                ax.bar(x + (i - 2.5) * 0.14, vals, 0.14, label=c)
            ax.axhline(means.loc[("none", "full")][metric], color="k", ls="--", label="full")
            ax.set_xticks(x, [f"−{r}" for r in removed], rotation=30, ha="right", fontsize=8)
            ax.set_title({"stage_f1": "stage macro F1", "os_cindex": "OS C-index"}[metric])
            lo = np.nanmin(means[metric].to_numpy())
            ax.set_ylim(max(0, lo - 0.05), None)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "downstream.png", dpi=110)
        plt.close(fig)
        text += ["![downstream](downstream.png)", ""]
    return "\n".join(text)


def counterfactual_section(curves: pd.DataFrame, areas: pd.DataFrame, out: Path, plt, modality: str) -> str:
    curves.to_csv(out / "counterfactual_curves.csv", index=False)
    areas.to_csv(out / "counterfactual_auc.csv", index=False)
    agg = areas.groupby("task", sort=False).agg(["mean", "std"])
    rows = [{"task": t, "AUC informed": _pm([r[("auc_informed", "mean")]], [r[("auc_informed", "std")]])[0],
             "AUC random (mean of orders)": f"{r[('auc_random', 'mean')]:.3f}",
             "difference": r[("auc_informed", "mean")] - r[("auc_random", "mean")]} for t, r in agg.iterrows()]
    text = [f"## 5. Counterfactual prioritisation of {modality}", "",
            f"Each test patient's score: for stage, the mean total-variation distance between the stage "
            f"classifier's class probabilities with each of K generated {modality} versions and without "
            f"{modality}; for survival, the mean squared change of the risk score. Patients get their real "
            f"{modality} in score order (informed) or in random orders; the metric is traced as the "
            "observed fraction goes 0 → 100%. Areas under the curves (fraction on [0, 1]); mean ± sd over "
            "repeats with new generation seeds.", "", markdown_table(pd.DataFrame(rows)), "",
            f"`cohere prioritize --modality {modality} --cohort DIR --models DIR` ranks a cohort's patients "
            f"who lack {modality} by this score.", ""]
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, task in zip(axes, ("stage", "survival")):
            c = curves[curves.task == task].groupby("fraction")[["informed", "random"]].mean()
            ax.plot(c.index * 100, c["informed"], label="informed (score order)")
            ax.plot(c.index * 100, c["random"], label="random order (mean)", ls="--")
            ax.set_xlabel(f"% of patients with {modality} observed")
            ax.set_ylabel({"stage": "stage macro F1", "survival": "OS C-index"}[task])
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "counterfactual.png", dpi=110)
        plt.close(fig)
        text += ["![counterfactual](counterfactual.png)", ""]
    return "\n".join(text)


# ----------------------------------------------------------------------------- the report


def write_report(out: Path, results: dict, meta: dict) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    ctx = meta.get("context", {})
    parts = ["# Coherent Denoising: the paper's evaluation", "",
             *(f"- {k}: {v}" for k, v in ctx.items()),
             f"- test patients (complete): {meta.get('n_test')}; training patients per modality: "
             f"{meta.get('n_train')}",
             f"- wall time per experiment (s): {meta.get('seconds')}", ""]
    if plt is None:
        parts += ["(matplotlib is not installed: figures skipped)", ""]
    if results.get("reconstruction") is not None:
        parts.append(reconstruction_section(results["reconstruction"], out, plt, results.get("rank_histograms")))
    if results.get("feature_space") is not None:
        parts.append(feature_section(results["feature_space"], out))
    if results.get("manifold") is not None:
        parts.append(manifold_section(results["manifold"], out, plt))
    if results.get("signal") is not None:
        parts.append(signal_section(*results["signal"], out, plt))
    if results.get("downstream") is not None:
        from .experiments import completion_table, pooled_draws
        plan = meta.get("plan", {})
        parts.append(downstream_section(results["downstream"], completion_table(results["downstream"]), out, plt,
                                        meta.get("forests", ""), results.get("downstream_ci"),
                                        pooled_draws(plan.get("draws", 0), plan.get("completion_draws")) or None,
                                        plan.get("resamples", 2000)))
    if results.get("counterfactual") is not None:
        parts.append(counterfactual_section(*results["counterfactual"], out, plt,
                                            meta.get("plan", {}).get("cf_modality", "")))
    if results.get("privacy") is not None:
        parts.append(privacy_section(results["privacy"], out, plt))
    recon = results.get("reconstruction")
    if recon is not None and not (recon["method"] == "MOFA+").any():
        parts += ["## Not run", "",
                  "- MOFA+ baseline: `mofapy2` is not installed (`pip install 'cohere-denoising[mofa]'`).", ""]
    (out / "report.md").write_text("\n".join(parts))
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return out / "report.md"
