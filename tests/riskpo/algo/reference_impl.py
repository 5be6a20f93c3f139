"""Slow, loop-based RiskPO reference in the style of the authors' release: Python loops over
bundles, papers and responses with torch scalar ops, torch.quantile per bundle, torch.std per
question. Written from docs/algorithm.md independently of riskpo/; the property tests and
bench/advantages.py compare the vectorised code against it.
"""

from __future__ import annotations

import math

import torch


def _weight(score, q_alpha, q_beta, *, alpha, beta, w_mix, natural_baseline, mix_cvar,
            risk_seeking, risk_seeking_u, advantage_form="release"):
    zero = torch.tensor(0.0, dtype=torch.float64)
    g = torch.maximum(score - q_alpha, zero) - torch.maximum(score - q_beta, zero)
    if natural_baseline:
        g = g + (q_alpha - q_beta)
    if advantage_form == "paper":  # -(1 + w)(qa - S)+ + g, or (1 + u)(S - qb)+ + g
        if risk_seeking:
            return (1 + risk_seeking_u) * torch.maximum(score - q_beta, zero) + g
        return -(1 + w_mix) * torch.maximum(q_alpha - score, zero) + g
    a_rvar = g / (beta - alpha)
    if risk_seeking:
        upper = torch.maximum(score - q_beta, zero) / (1 - beta)
        return (risk_seeking_u * upper + a_rvar) / (1 + risk_seeking_u)
    if not mix_cvar:
        return a_rvar
    a_cvar = -torch.maximum(q_alpha - score, zero) / alpha
    return (w_mix * a_cvar + a_rvar) / (1 + w_mix)


def _question_rows(rewards, question_ids, bundle_ids, valid, keys):
    """{bundle id: {question id: [valid row indices in pairing order]}} in sorted id order."""
    bundles: dict[int, dict[int, list[int]]] = {}
    for i in range(len(rewards)):
        questions = bundles.setdefault(int(bundle_ids[i]), {})
        rows = questions.setdefault(int(question_ids[i]), [])
        if valid is None or bool(valid[i]):
            rows.append(i)
    ordered = {}
    for bundle in sorted(bundles):
        ordered[bundle] = {}
        for question in sorted(bundles[bundle]):
            rows = bundles[bundle][question]
            if keys is not None:
                rows = sorted(rows, key=lambda i: float(keys[i]))
            ordered[bundle][question] = rows
    return ordered


def _question_std(rewards, rows):
    if len(rows) < 2:
        return torch.tensor(1.0, dtype=torch.float64)
    sigma = torch.std(torch.stack([rewards[i] for i in rows]))
    return sigma if sigma > 1e-3 else torch.tensor(1.0, dtype=torch.float64)


def reference_riskpo(rewards, question_ids, bundle_ids, *, alpha=0.2, beta=0.8, w_mix=1.5,
                     natural_baseline=True, mix_cvar=True, risk_seeking=False, risk_seeking_u=1.5,
                     std_normalize=True, credit="uniform", quantiles=None, quantile_source="bundle",
                     valid=None, pairing="index", generator=None, advantage_form="release"):
    """RiskPO advantages [N] (float64). quantile_source: "bundle"; with `quantiles` given,
    "tracked" uses them and "mix" averages them with each bundle's own. std_normalize divides
    by the bundle's score std against bundle quantiles, by the std of all papers otherwise."""
    rewards = rewards.to(torch.float64)
    keys = None
    if pairing == "permute":
        keys = torch.rand(len(rewards), generator=generator, dtype=torch.float64)
    options = dict(alpha=alpha, beta=beta, w_mix=w_mix, natural_baseline=natural_baseline,
                   mix_cvar=mix_cvar, risk_seeking=risk_seeking, risk_seeking_u=risk_seeking_u,
                   advantage_form=advantage_form)
    bundles = []  # (scores, rows of each question) per bundle with papers
    for questions in _question_rows(rewards, question_ids, bundle_ids, valid, keys).values():
        present = [rows for rows in questions.values() if rows]
        if not present:
            continue
        num_papers = min(len(rows) for rows in present)
        scores = []
        for j in range(num_papers):
            score = torch.tensor(0.0, dtype=torch.float64)
            for rows in present:
                score = score + rewards[rows[j]]
            scores.append(score)
        bundles.append((torch.stack(scores), present))
    pooled = quantiles is not None and quantile_source in ("tracked", "mix")
    all_scores = torch.cat([scores for scores, _ in bundles]) if bundles else torch.zeros(0)
    advantages = torch.zeros(len(rewards), dtype=torch.float64)
    for scores, present in bundles:
        q_alpha, q_beta = torch.quantile(scores, alpha), torch.quantile(scores, beta)
        if quantiles is not None:
            given_alpha, given_beta = (torch.tensor(float(q), dtype=torch.float64) for q in quantiles)
            if quantile_source == "mix":
                q_alpha, q_beta = (q_alpha + given_alpha) / 2, (q_beta + given_beta) / 2
            else:
                q_alpha, q_beta = given_alpha, given_beta
        spread_of = all_scores if pooled else scores
        divisor = torch.tensor(1.0, dtype=torch.float64)
        if std_normalize and len(spread_of) > 1:
            std = torch.std(spread_of)
            divisor = std + 1e-6 if std >= 1e-6 else divisor
        for j in range(len(scores)):
            paper_advantage = _weight(scores[j], q_alpha, q_beta, **options)
            if std_normalize:
                paper_advantage = paper_advantage / divisor
            _give_credit(advantages, paper_advantage, [rows[j] for rows in present], present,
                         rewards, credit)
    return advantages


def _give_credit(advantages, paper_advantage, paper_rows, question_rows, rewards, credit):
    if credit == "uniform":
        for i in paper_rows:
            advantages[i] = paper_advantage
    elif credit == "std":
        for i, rows in zip(paper_rows, question_rows, strict=True):
            advantages[i] = paper_advantage / _question_std(rewards, rows)
    elif credit == "sum_mean":
        rho = []
        for i, rows in zip(paper_rows, question_rows, strict=True):
            mean = torch.stack([rewards[k] for k in rows]).mean()
            rho.append(rewards[i] - mean)
        total = torch.stack(rho).sum()
        for i, rho_i in zip(paper_rows, rho, strict=True):
            if abs(total) <= 1e-6:
                advantages[i] = paper_advantage / len(paper_rows)
            else:
                advantages[i] = paper_advantage * rho_i / total
    else:
        raise ValueError(credit)


def reference_pass_at_k(n: int, c: int, k: int) -> float:
    """Exact 1 - C(n-c, k) / C(n, k) with integer combinatorics."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def reference_group_baseline(rewards, question_ids, valid, kind, std_normalize=True):
    """GRPO / Dr.GRPO / RLOO / REINFORCE-with-batch-baseline advantages [N] (float64) in plain
    Python: each group's valid rewards gathered once, then one response at a time."""
    groups: dict[int, list[float]] = {}
    keys = [0 if kind == "reinforce_baseline" else int(question_ids[i]) for i in range(len(rewards))]
    valid_rows = [valid is None or bool(valid[i]) for i in range(len(rewards))]
    for i in range(len(rewards)):
        if valid_rows[i]:
            groups.setdefault(keys[i], []).append(float(rewards[i]))
    stats = {}
    for key, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        stats[key] = (mean, std, sum(values), len(values))
    advantages = [0.0] * len(rewards)
    for i in range(len(rewards)):
        mean, std, total, count = stats.get(keys[i], (0.0, 0.0, 0.0, 0))
        if not valid_rows[i] or count < (1 if kind == "reinforce_baseline" else 2):
            continue
        reward = float(rewards[i])
        if kind == "rloo":
            advantages[i] = reward - (total - reward) / (count - 1)
        elif kind == "grpo" and std_normalize:
            advantages[i] = (reward - mean) / (std + 1e-6)
        elif kind == "reinforce_baseline" and std_normalize and count > 1:
            advantages[i] = (reward - mean) / (std + 1e-6 if std >= 1e-6 else 1.0)
        else:
            advantages[i] = reward - mean
    return torch.tensor(advantages, dtype=torch.float64)


def _valid_groups(rewards, question_ids, valid):
    """{question id: [valid rewards]} and each row's validity, in plain Python."""
    groups: dict[int, list[float]] = {}
    valid_rows = [valid is None or bool(valid[i]) for i in range(len(rewards))]
    for i in range(len(rewards)):
        groups.setdefault(int(question_ids[i]), [])
        if valid_rows[i]:
            groups[int(question_ids[i])].append(float(rewards[i]))
    return groups, valid_rows


def _std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def reference_qae(rewards, question_ids, valid, quantile=0.4, std_normalize=True):
    """QAE advantages [N] (float64) as the authors' verl patch computes them, one response at a
    time: (r - torch.quantile(group, K)) / (torch.std(group) + 1e-6); a group with < 2 valid
    responses gives 0."""
    groups, valid_rows = _valid_groups(rewards, question_ids, valid)
    advantages = [0.0] * len(rewards)
    for i in range(len(rewards)):
        values = groups[int(question_ids[i])]
        if not valid_rows[i] or len(values) < 2:
            continue
        baseline = torch.quantile(torch.tensor(values, dtype=torch.float64), quantile).item()
        advantage = float(rewards[i]) - baseline
        advantages[i] = advantage / (_std(values) + 1e-6) if std_normalize else advantage
    return torch.tensor(advantages, dtype=torch.float64)


def reference_f_grpo(rewards, question_ids, valid, gamma=1.0, std_normalize=True, threshold=1.0):
    """F-GRPO advantages [N] (float64), one response at a time: GRPO's (r - mean) / (std + 1e-6)
    times (1 - p)^gamma, p = the share of the group's valid rewards >= threshold; a group with
    < 2 valid responses gives 0."""
    groups, valid_rows = _valid_groups(rewards, question_ids, valid)
    advantages = [0.0] * len(rewards)
    for i in range(len(rewards)):
        values = groups[int(question_ids[i])]
        if not valid_rows[i] or len(values) < 2:
            continue
        advantage = float(rewards[i]) - sum(values) / len(values)
        if std_normalize:
            advantage = advantage / (_std(values) + 1e-6)
        success = sum(1 for v in values if v >= threshold) / len(values)
        advantages[i] = advantage * (1.0 - success) ** gamma
    return torch.tensor(advantages, dtype=torch.float64)
