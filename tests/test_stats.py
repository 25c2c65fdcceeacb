"""Known-answer tests for classlab.stats; scipy (a test-only reference) checks a wider grid."""

import math

import numpy as np
import pytest
import scipy.stats

from classlab import stats


def _exact_mcnemar_by_hand(b: int, c: int) -> float:
    """min(1, 2 * P(X <= min(b, c))), X ~ Binomial(b + c, 1/2), straight from math.comb."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))  # times 2**n
    return min(1.0, 2 * tail / 2**n)


# --------------------------------------------------------------------------- mcnemar_exact


@pytest.mark.parametrize(("b", "c", "expected"), [
    (0, 0, 1.0),  # no discordant image: no evidence
    (5, 0, 2 * 0.5**5),  # 0.0625: only X = 0 is as extreme
    (10, 2, 2 * (1 + 12 + 66) / 2**12),  # C(12, 0..2) = 1, 12, 66 -> 0.0385742...
    (3, 3, 1.0),  # the observed split is the centre
    (4, 3, 1.0),  # 2 * P(X <= 3 | n = 7) = 2 * 0.5 = 1
    (1, 0, 1.0),  # 2 * 0.5, capped
])
def test_mcnemar_exact_small_tables(b, c, expected):
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)
    assert stats.mcnemar_exact(b, c) == pytest.approx(_exact_mcnemar_by_hand(b, c), rel=1e-12)


def test_mcnemar_exact_large_table_matches_comb_sum():
    expected = _exact_mcnemar_by_hand(120, 80)
    assert 0.004 < expected < 0.007  # a z-approximation gives ~0.0057; guards the helper
    assert stats.mcnemar_exact(120, 80) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_is_symmetric():
    for b, c in [(10, 2), (120, 80), (0, 7), (999, 1001)]:
        assert stats.mcnemar_exact(b, c) == stats.mcnemar_exact(c, b)


def test_mcnemar_exact_stays_exact_for_huge_tables():
    # 2 * 0.5**1000 = 2**-999 is representable (a float sum of terms would be fine here
    # too, but only an exact or log-space computation gets the next two right).
    assert stats.mcnemar_exact(0, 1000) == 2.0**-999
    # Far below the smallest double: must come out 0.0, not NaN or an error.
    assert stats.mcnemar_exact(0, 20_000) == 0.0
    # n = 20,000 near the centre: ~10,000 terms, each comb(20000, i) * 0.5**20000 overflowing
    # as floats. (The math.comb reference takes ~20 s here, so the check is the normal
    # approximation with continuity correction, z = (200 - 1) / sqrt(20000), which is good
    # to ~1e-5 at this n; the scipy test below compares exactly.)
    z = (200 - 1) / math.sqrt(20_000)
    p = stats.mcnemar_exact(9_900, 10_100)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), abs=1e-4)  # 0.15938...


def test_mcnemar_exact_rejects_bad_counts():
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 3)
    with pytest.raises(TypeError):
        stats.mcnemar_exact(2.5, 3)


# --------------------------------------------------------------------------- mcnemar_counts


def test_mcnemar_counts_on_constructed_arrays():
    # image:         0      1      2      3      4      5      6
    a = np.array([True, True, True, False, False, True, False])
    b = np.array([True, False, False, True, False, False, True])
    # A right & B wrong: images 1, 2, 5 -> 3; A wrong & B right: images 3, 6 -> 2
    assert stats.mcnemar_counts(a, b) == (3, 2)
    assert stats.mcnemar_counts(b, a) == (2, 3)
    assert stats.mcnemar_counts(list(a.astype(int)), list(b)) == (3, 2)  # 0/1 ints, lists
    counts = stats.mcnemar_counts(a, b)
    assert all(type(x) is int for x in counts)


def test_mcnemar_counts_length_mismatch_raises():
    with pytest.raises(ValueError, match="length"):
        stats.mcnemar_counts([True, False, True], [True, False])


def test_mcnemar_counts_refuses_non_boolean_values():
    with pytest.raises(ValueError):
        stats.mcnemar_counts([0.9, 0.2], [0.1, 0.8])  # probabilities, not correctness
    with pytest.raises(ValueError):
        stats.mcnemar_counts([3, 1], [1, 1])  # labels, not correctness


# --------------------------------------------------------------------------- mcnemar_pooled


def test_mcnemar_pooled_single_stratum_equals_exact():
    assert stats.mcnemar_pooled([(10, 2)]) == stats.mcnemar_exact(10, 2)
    assert stats.mcnemar_pooled([(120, 80)]) == stats.mcnemar_exact(120, 80)


def test_mcnemar_pooled_sums_the_strata():
    pairs = [(10, 2), (7, 4), (0, 0), (25, 18)]
    assert stats.mcnemar_pooled(pairs) == stats.mcnemar_exact(42, 24)
    assert stats.mcnemar_pooled(pairs) == pytest.approx(_exact_mcnemar_by_hand(42, 24))


def test_mcnemar_pooled_is_direction_aware():
    # One seed favours A, the other B by the same margin: they cancel (p = 1), whereas each
    # seed alone is significant.
    assert stats.mcnemar_exact(20, 5) < 0.01
    assert stats.mcnemar_pooled([(20, 5), (5, 20)]) == 1.0


def test_mcnemar_pooled_empty_is_one():
    assert stats.mcnemar_pooled([]) == 1.0


# --------------------------------------------------------------------------- holm


def test_holm_known_list():
    # m = 4. Sorted: 0.005 (idx 3), 0.01 (idx 0), 0.03 (idx 2), 0.04 (idx 1).
    #   j=0: 4 * 0.005 = 0.02
    #   j=1: 3 * 0.01  = 0.03  -> max(0.02, 0.03) = 0.03
    #   j=2: 2 * 0.03  = 0.06  -> 0.06
    #   j=3: 1 * 0.04  = 0.04  -> max(0.06, 0.04) = 0.06 (monotonicity)
    # Back in input order: [0.03, 0.06, 0.06, 0.02].
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)


def test_holm_is_monotone_and_capped():
    raw = [0.2, 0.001, 0.6, 0.04, 0.3, 0.9]
    adjusted = stats.holm(raw)
    assert max(adjusted) == 1.0  # 2 * 0.6 and later ones exceed 1
    assert all(a >= p for a, p in zip(adjusted, raw))
    pairs = sorted(zip(raw, adjusted))
    assert all(a1 <= a2 for (_, a1), (_, a2) in zip(pairs, pairs[1:]))
    assert stats.holm([0.5, 0.7]) == [1.0, 1.0]


def test_holm_edge_cases():
    assert stats.holm([]) == []
    assert stats.holm([0.03]) == [0.03]
    with pytest.raises(ValueError):
        stats.holm([0.1, 1.5])
    with pytest.raises(ValueError):
        stats.holm([float("nan")])


# --------------------------------------------------------------------------- t_ppf


@pytest.mark.parametrize(("q", "df", "expected"), [
    (0.975, 1, 12.7062),
    (0.975, 2, 4.3027),
    (0.975, 4, 2.7764),
    (0.975, 9, 2.2622),
    (0.975, 30, 2.0423),
    (0.95, 10, 1.8125),
    (0.995, 5, 4.0321),
])
def test_t_ppf_table_values(q, df, expected):
    assert stats.t_ppf(q, df) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("q", [0.51, 0.6, 0.75, 0.9, 0.975, 0.999, 0.9995])
def test_t_ppf_closed_forms(q):
    # df = 1 is the Cauchy distribution: tan(pi (q - 1/2)).
    assert stats.t_ppf(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10, abs=1e-9)
    # df = 2: t = (2q - 1) / sqrt(2 q (1 - q)).
    t2 = (2 * q - 1) / math.sqrt(2 * q * (1 - q))
    assert stats.t_ppf(q, 2) == pytest.approx(t2, rel=1e-10, abs=1e-9)


def test_t_ppf_large_df_approaches_normal():
    assert stats.t_ppf(0.975, 100_000) == pytest.approx(1.959964, abs=1e-4)
    assert stats.t_ppf(0.975, 1000) == pytest.approx(1.962339, abs=1e-5)


def test_t_ppf_symmetry_and_domain():
    assert stats.t_ppf(0.5, 7) == 0.0
    assert stats.t_ppf(0.025, 4) == pytest.approx(-stats.t_ppf(0.975, 4), rel=1e-12)
    for q in (0.0, 1.0, -0.1, 1.2):
        with pytest.raises(ValueError):
            stats.t_ppf(q, 3)
    with pytest.raises(ValueError):
        stats.t_ppf(0.9, 0)


# --------------------------------------------------------------------------- mean_ci


def test_mean_ci_known_sample():
    values = [90.18, 90.26, 90.12]
    # mean = 270.56 / 3 = 90.186667; deviations -0.006667, 0.073333, -0.066667;
    # sum of squares = 0.0000444 + 0.0053778 + 0.0044444 = 0.0098667 (= 0.00986667);
    # sd = sqrt(0.00986667 / 2) = 0.0702377
    sd = math.sqrt(0.0098666667 / 2)
    half = 4.3027 * sd / math.sqrt(3)  # t_{0.975, 2} = 4.3027
    ci = stats.mean_ci(values)
    assert ci["n"] == 3
    assert ci["mean"] == pytest.approx(90.186667, abs=1e-6)
    assert ci["sd"] == pytest.approx(sd, rel=1e-6)
    assert ci["sd"] == pytest.approx(0.0702377, abs=1e-7)
    assert ci["lo"] == pytest.approx(90.186667 - half, abs=1e-4)
    assert ci["hi"] == pytest.approx(90.186667 + half, abs=1e-4)


def test_mean_ci_level_changes_width():
    values = [1.0, 2.0, 4.0, 7.0]
    ci90, ci99 = stats.mean_ci(values, level=0.90), stats.mean_ci(values, level=0.99)
    sem = ci90["sd"] / 2.0  # sqrt(n) = 2
    assert ci90["hi"] - ci90["mean"] == pytest.approx(2.3534 * sem, abs=1e-3)  # t_{.95, 3}
    assert ci99["hi"] - ci99["mean"] == pytest.approx(5.8409 * sem, abs=1e-3)  # t_{.995, 3}


def test_mean_ci_single_value():
    assert stats.mean_ci([91.5]) == {"n": 1, "mean": 91.5, "sd": None, "lo": None, "hi": None}


def test_mean_ci_rejects_bad_input():
    with pytest.raises(ValueError):
        stats.mean_ci([])
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, 2.0], level=1.0)


# --------------------------------------------------------------------------- format_p


@pytest.mark.parametrize(("p", "text"), [
    (0.0, "p < 0.001"),
    (0.00099, "p < 0.001"),
    (0.001, "p = 0.0010"),
    (0.0034, "p = 0.0034"),
    (0.034, "p = 0.034"),
    (0.05, "p = 0.050"),
    (0.0999, "p = 0.10"),
    (0.1, "p = 0.10"),
    (0.4123, "p = 0.41"),
    (1.0, "p = 1.00"),
])
def test_format_p(p, text):
    assert stats.format_p(p) == text


def test_format_p_rejects_out_of_range():
    for p in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError):
            stats.format_p(p)


# --------------------------------------------------------------------------- scipy reference


def test_mcnemar_exact_matches_scipy_binomtest():
    tables = [(5, 0), (10, 2), (3, 3), (17, 30), (120, 80), (480, 520), (4_600, 5_400),
              (9_900, 10_100)]
    for b, c in tables:
        ref = scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert stats.mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9)


def test_t_ppf_matches_scipy_on_a_grid():
    qs = [0.001, 0.05, 0.3, 0.51, 0.6, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999, 0.9995]
    for df in [1, 2, 3, 4, 5, 7, 10, 15, 30, 60, 100, 250, 1000]:
        for q in qs:
            ref = float(scipy.stats.t.ppf(q, df))
            assert stats.t_ppf(q, df) == pytest.approx(ref, abs=1e-6), (q, df)
