"""Bundles, papers, pairing and credit assignment."""

from __future__ import annotations

import pytest
import torch

from riskpo.algo.bundles import (
    assign_credit,
    bundle_quantiles,
    bundle_score_std,
    consecutive_bundles,
    form_papers,
)


def _ids(num_questions: int, n: int, bundle_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    question_ids = torch.arange(num_questions).repeat_interleave(n)
    return question_ids, question_ids // bundle_size


def test_papers_take_the_jth_response_of_every_question_in_a_ragged_last_bundle():
    # 3 questions x 2 responses, bundles of 2: bundle 0 = {q0, q1}, bundle 1 = {q2}
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    question_ids, bundle_ids = _ids(3, 2, 2)
    papers = form_papers(rewards, question_ids, bundle_ids)
    assert papers.papers_per_bundle.tolist() == [2, 2]
    assert papers.paper_bundle.tolist() == [0, 0, 1, 1]
    assert papers.paper_scores.tolist() == [2.0, 1.0, 0.0, 0.0]
    assert papers.response_paper.tolist() == [0, 1, 0, 1, 2, 3]


def test_index_pairing_follows_order_of_appearance_not_row_position():
    rewards = torch.tensor([1.0, 5.0, 2.0, 7.0])
    question_ids = torch.tensor([10, 20, 10, 20])  # interleaved rows
    papers = form_papers(rewards, question_ids, torch.zeros(4, dtype=torch.long))
    assert papers.paper_scores.tolist() == [6.0, 9.0]


def test_permute_pairing_is_a_seeded_permutation_per_question():
    rewards = torch.arange(40.0)
    question_ids, bundle_ids = _ids(4, 10, 4)
    papers = [form_papers(rewards, question_ids, bundle_ids, pairing="permute",
                          generator=torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert torch.equal(papers[0].response_paper, papers[1].response_paper)
    assert not torch.equal(papers[0].response_paper, papers[2].response_paper)
    for question in range(4):
        rows = question_ids == question
        assert sorted(papers[0].response_paper[rows].tolist()) == list(range(10))


def test_masked_rows_leave_papers_and_surplus_stays_unpaired():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    question_ids, bundle_ids = _ids(2, 3, 2)
    valid = torch.tensor([True, False, True, True, True, True])
    papers = form_papers(rewards, question_ids, bundle_ids, valid)
    assert papers.papers_per_bundle.tolist() == [2]
    assert papers.response_paper.tolist() == [0, -1, 1, 0, 1, -1]
    assert papers.paper_scores.tolist() == [1.0, 1.0]


def test_structure_errors_name_the_culprit():
    question_ids, bundle_ids = _ids(2, 2, 2)
    with pytest.raises(ValueError, match="question id 7 has 1 response"):
        form_papers(torch.ones(3), torch.tensor([0, 0, 7]), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="allow_surplus"):
        form_papers(torch.ones(5), torch.tensor([0, 0, 0, 1, 1]), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="question id 1 has responses in more than one bundle"):
        form_papers(torch.ones(4), question_ids, torch.tensor([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="pairing"):
        form_papers(torch.ones(4), question_ids, bundle_ids, pairing="zip")
    with pytest.raises(ValueError, match="NaN"):
        form_papers(torch.tensor([1.0, float("nan"), 0.0, 0.0]), question_ids, bundle_ids)
    with pytest.raises(ValueError, match="bundle_ids has shape"):
        form_papers(torch.ones(4), question_ids, bundle_ids[:3])


def test_allow_surplus_pairs_min_n():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    papers = form_papers(rewards, torch.tensor([0, 0, 0, 1, 1]), torch.zeros(5, dtype=torch.long),
                         allow_surplus=True)
    assert papers.paper_scores.tolist() == [1.0, 2.0]
    assert papers.response_paper.tolist() == [0, 1, -1, 0, 1]


def test_bundle_quantiles_and_std_with_a_single_paper():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 9.0])
    papers = form_papers(rewards, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2]),
                         torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]))  # papers 5,7,9 and 7,9
    q_alpha, q_beta = bundle_quantiles(papers, 0.25, 0.75)
    assert q_alpha.tolist() == [6.0, 7.5] and q_beta.tolist() == [8.0, 8.5]
    std = bundle_score_std(papers)
    torch.testing.assert_close(std, torch.tensor([2.0, 2**0.5], dtype=torch.float64))


def test_sum_mean_gives_equal_shares_when_rho_sums_to_zero():
    # both questions all-equal -> rho = 0 everywhere -> equal shares A / 2
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    question_ids, bundle_ids = _ids(2, 2, 2)
    papers = form_papers(rewards, question_ids, bundle_ids)
    credit = assign_credit(torch.tensor([-2.0, 4.0], dtype=torch.float64), papers, rewards,
                           mode="sum_mean")
    assert credit.tolist() == [-1.0, 2.0, -1.0, 2.0]


def test_credit_gives_zero_to_unpaired_rows_and_rejects_unknown_modes():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    question_ids, bundle_ids = _ids(2, 2, 2)
    valid = torch.tensor([True, True, True, False])
    papers = form_papers(rewards, question_ids, bundle_ids, valid)
    for mode in ("uniform", "std", "sum_mean"):
        credit = assign_credit(torch.tensor([-1.0], dtype=torch.float64), papers, rewards, valid, mode)
        assert credit[1] == 0 and credit[3] == 0 and torch.isfinite(credit).all()
    with pytest.raises(ValueError, match="credit"):
        assign_credit(torch.zeros(1), papers, rewards, valid, "max")


def test_consecutive_bundles_cut_questions_in_id_order():
    question_ids = torch.tensor([3, 3, 0, 0, 1, 1, 4, 4, 2, 2])  # rows in any order
    assert consecutive_bundles(question_ids, 2).tolist() == [1, 1, 0, 0, 0, 0, 2, 2, 1, 1]
    assert consecutive_bundles(torch.arange(7).repeat_interleave(2), 5).tolist() == [0] * 10 + [1] * 4
    with pytest.raises(ValueError, match="bundle_size"):
        consecutive_bundles(question_ids, 0)

